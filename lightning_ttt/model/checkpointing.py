"""Activation checkpointing as a policy applied to a built model (torchtitan style), not a branch in it.

``checkpoint_blocks``: every block's whole-sequence ``forward`` (the prefix of e2e, every block of
fa and swa) is wrapped with PyTorch's non-reentrant ``checkpoint_wrapper``, so only its input is kept
and its activations are recomputed in the backward pass. The chunked path of the suffix blocks
(``forward_chunk``) is untouched: ``checkpoint_chunks`` (a schedule, ``lightning_ttt.ttt.schedule``) recomputes whole inner-loop steps instead and
is passed to the inner loop by its caller (``lm_loss(..., checkpoint_chunks=...)``). State-dict keys
do not change, so checkpoints load either way.

``offload_block_inputs``: the one tensor checkpointing keeps per block, its input ([B, T, D], fp32), is
copied to host memory and kept there; the recomputation copies it back. At long context these inputs
dominate what checkpointing keeps (24 prefix blocks of the 3B model at 128K tokens: about 31 GB), so this
moves them off the accelerator for two copies per block and step. On a CPU it changes nothing.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper, checkpoint_wrapper
from torch.utils.checkpoint import checkpoint

from lightning_ttt.model.transformer import Transformer


HOST = torch.device("cpu")


def checkpoint_blocks(model: Transformer, offload_inputs: bool = False) -> Transformer:
    """Wrap every block of ``model`` for activation checkpointing (idempotent); returns the model.
    ``offload_inputs`` keeps each block's saved input in host memory (module docstring)."""
    for i, block in enumerate(model.blocks):
        if not isinstance(block, CheckpointWrapper):
            model.blocks[i] = checkpoint_wrapper(block, checkpoint_fn=offloaded_checkpoint) if offload_inputs \
                else checkpoint_wrapper(block)
    return model


def offloaded_checkpoint(block: nn.Module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Non-reentrant checkpoint of ``block(x, *args)`` that holds only a host copy of ``x`` for the backward.

    The copy to the host is differentiable (its backward copies the gradient back) and saves nothing; the
    checkpoint keeps its own arguments, which is then the host copy alone.
    """
    return checkpoint(_run_on, block, x.to(HOST), x.device, *args, use_reentrant=False, **kwargs)


def _run_on(block: nn.Module, host_x: torch.Tensor, device: torch.device, *args, **kwargs) -> torch.Tensor:
    return block(host_x.to(device), *args, **kwargs)
