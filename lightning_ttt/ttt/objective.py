"""The language-modelling objective of every method, with or without test-time training."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_ttt.model.transformer import Transformer, chunk_losses, token_nll
from lightning_ttt.ttt.inner_loop import InnerLoopOutput, run_inner_loop
from lightning_ttt.ttt.update import UpdateFn


@dataclass
class LMOutput:
    chunk_loss: Tensor  # [B, n_chunks]
    token_nll: Tensor  # [B, T], unmasked
    logits: Tensor | None = None  # [B, T, V] when requested
    inner: InnerLoopOutput | None = None  # present when TTT ran

    @property
    def loss(self) -> Tensor:
        """Mean over chunks of each chunk's masked mean NLL, then mean over sequences."""
        return self.chunk_loss.mean()


def lm_loss(model: Transformer, input_ids: Tensor, targets: Tensor, loss_mask: Tensor, *, ttt: bool,
            update: UpdateFn | None = None, create_graph: bool = False, checkpoint_chunks: str | bool = "none",
            keep_logits: bool = False, keep_history: bool = False) -> LMOutput:
    """Loss of a batch [B, T].

    ``ttt=False`` runs every block over the whole sequence with the outer weights (fa, swa, and
    e2e without meta-learning). ``ttt=True`` runs the prefix once and the suffix through the inner
    loop; ``create_graph`` selects meta-learning (second order) versus first-order evaluation.
    """
    seq_len = input_ids.shape[1]
    model.cfg.check_seq_len(seq_len)
    if not ttt:
        h = model(input_ids)  # [B, T, D]
        logits = model.logits(h) if keep_logits else None  # [B, T, V] only when asked for
        nll = token_nll(logits, targets) if keep_logits else model.nll(h, targets, fused=True)
        return LMOutput(chunk_losses(nll, loss_mask, model.cfg.loss_chunk(seq_len)), nll, logits)
    if update is None:
        raise ValueError("lm_loss(ttt=True) needs an inner update function")
    with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
        prefix_out = model.prefix(input_ids)
    inner = run_inner_loop(model, prefix_out, targets, loss_mask, update, create_graph=create_graph,
                           checkpoint_chunks=checkpoint_chunks, keep_logits=keep_logits, keep_history=keep_history)
    return LMOutput(inner.chunk_loss, inner.token_nll, inner.logits, inner)
