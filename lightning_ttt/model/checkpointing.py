"""Activation checkpointing as a policy applied to a built model (torchtitan style), not a branch in it.

``checkpoint_blocks``: every block's whole-sequence ``forward`` (the prefix of e2e, every block of
fa and swa) is wrapped with PyTorch's non-reentrant ``checkpoint_wrapper``, so only its input is kept
and its activations are recomputed in the backward pass. The chunked path of the suffix blocks
(``forward_chunk``) is untouched: ``checkpoint_chunks`` (a schedule, ``lightning_ttt.ttt.schedule``) recomputes whole inner-loop steps instead and
is passed to the inner loop by its caller (``lm_loss(..., checkpoint_chunks=...)``). State-dict keys
do not change, so checkpoints load either way.
"""

from __future__ import annotations

from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper, checkpoint_wrapper

from lightning_ttt.model.transformer import Transformer


def checkpoint_blocks(model: Transformer) -> Transformer:
    """Wrap every block of ``model`` for activation checkpointing (idempotent); returns the model."""
    for i, block in enumerate(model.blocks):
        if not isinstance(block, CheckpointWrapper):
            model.blocks[i] = checkpoint_wrapper(block)
    return model
