"""FSDP2 sharding as a policy applied to a built model (torchtitan style), shaped for meta-learning.

Meta-learning differentiates the inner loop's gradient a second time. FSDP2 gathers a unit's weights
in hooks around its forward and reduces its gradients in hooks around its backward; an inner
``autograd.grad`` that crossed a unit boundary would fire those hooks mid-step (freeing weights that the
outer backward still reads, or reducing gradients that do not exist yet). So the inner loop must run
inside one unit: every block without fast weights (the prefix, which the inner gradient never enters)
is its own unit, and the *root* unit holds everything the inner loop touches: the suffix blocks, the
final norm and the head (with the tied embedding). The root is gathered when the prefix starts (FSDP2
hooks on ``Transformer.prefix`` as well as ``forward``) and kept gathered until its gradients are
reduced at the end of the outer backward (``reshard_after_forward=False``).

Models without fast weights (fa, swa) shard every block.
"""

from __future__ import annotations

from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from lightning_ttt.model.transformer import Transformer


def shard_model(model: Transformer, mesh: DeviceMesh | None = None,
                mp_policy: MixedPrecisionPolicy | None = None) -> Transformer:
    """Apply ``fully_shard`` to ``model``'s units (after activation checkpointing wrappers); returns it.

    ``mesh`` is the data-parallel device mesh (None: all ranks of the default process group).
    """
    if isinstance(model, FSDPModule):
        return model
    kwargs = {"mesh": mesh} if mesh is not None else {}
    if mp_policy is not None:
        kwargs["mp_policy"] = mp_policy
    own_units = model.cfg.prefix_len if model.cfg.has_prime else model.cfg.n_layers
    for block in model.blocks[:own_units]:
        fully_shard(block, **kwargs)
    fully_shard(model, reshard_after_forward=False, **kwargs)
    register_fsdp_forward_method(model, "prefix")
    return model
