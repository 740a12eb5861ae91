"""Sharded data parallelism for every method, e2e meta-learning included: ``trainer.strategy: fsdp2``.

``FSDP2Strategy`` is Lightning's ``ModelParallelStrategy`` reduced to what this project supports:
every process is one data-parallel shard (PyTorch FSDP2, no tensor parallelism), and checkpoints are
one file, gathered on rank 0 and written atomically, so ``--ckpt_path``, ``model.init_from`` and
``ttt export`` read them as they read DDP ones. The module's ``configure_model`` applies the sharding
(``lightning_ttt.model.sharding.shard_model``: the inner loop stays inside one unit).

Which strategies can carry meta-learning (gradients of gradients) is decided in ``meta_strategy_problem``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry

from lightning_ttt.lit.checkpoint_io import AtomicCheckpointIO

STRATEGY_NAME = "fsdp2"


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over all processes (data-parallel size = world size, tensor-parallel size 1).

    Args:
        save_distributed_checkpoint: Each rank writes its shard into a checkpoint folder (faster for
            large models) instead of one file gathered on rank 0 (the default, readable by every ttt tool).
        process_group_backend: nccl on GPUs, gloo on CPUs when None.
        timeout: For the collectives.
    """

    def __init__(self, save_distributed_checkpoint: bool = False, process_group_backend: str | None = None,
                 timeout: timedelta | None = default_pg_timeout) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, timeout=timeout)
        self.checkpoint_io = AtomicCheckpointIO()

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # every process is a data shard
        super().setup_environment()


if STRATEGY_NAME not in StrategyRegistry:
    StrategyRegistry.register(STRATEGY_NAME, FSDP2Strategy,
                              description="FSDP2 data parallelism that carries e2e meta-learning (lightning_ttt)")


def strategy_problem(strategy: Any, meta_learning: bool) -> str | None:
    """Why ``strategy`` (a Lightning strategy or its registry name) cannot train this model, or None.

    FSDP2 (``fsdp2``, or ``ModelParallelStrategy`` with tensor_parallel_size=1) carries meta-learning:
    the module shards so that the inner loop runs inside one unit. Tensor parallelism is not implemented
    for any method. Lightning's FSDPStrategy (FSDP1) wraps units by a policy that knows nothing of the
    inner loop and does not run on CPU, so it stays untested and refused for meta-learning, as does
    DeepSpeed ZeRO-3 (``ZERO3_REASON``).
    """
    if isinstance(strategy, ModelParallelStrategy):
        mesh = strategy._device_mesh
        size = mesh["tensor_parallel"].size() if mesh is not None else strategy._tensor_parallel_size
        if size != 1:
            return (f"ModelParallelStrategy with tensor_parallel_size={size}: tensor parallelism is not "
                    f"implemented; use {STRATEGY_NAME} (or tensor_parallel_size: 1)")
        return None
    if not meta_learning:
        return None
    if isinstance(strategy, str):
        name, stage = strategy.lower(), 3 if "stage_3" in strategy else None
    else:
        name = type(strategy).__name__.lower()
        stage = (getattr(strategy, "config", None) or {}).get("zero_optimization", {}).get("stage")
    if name.startswith("fsdp") and name != STRATEGY_NAME:
        return ("Lightning's FSDPStrategy (FSDP1) is untested with gradients of gradients (it wraps units by "
                f"a policy that ignores the inner loop and needs a GPU); use {STRATEGY_NAME}")
    if name.startswith("deepspeed") and stage == 3:
        return ZERO3_REASON
    return None


ZERO3_REASON = ("DeepSpeed ZeRO-3 gathers and frees partitioned weights in hooks that the inner autograd.grad "
                "crosses, and fails even a second backward through one graph (DeepSpeed issue 3539); use "
                f"{STRATEGY_NAME}, ddp or deepspeed_stage_1/2")
