"""Next-token NLL from hidden states without the whole [T, V] logits tensor.

``linear_nll`` computes ``final_norm(h) @ headᵀ`` and its cross-entropy a slice of tokens at a time.
Each slice runs under non-reentrant activation checkpointing, so only one slice's logits
([tokens, V]) exist at once, in the forward and in the backward pass (where the slice is
recomputed); nothing of size T x V is kept for the backward. Gradients are those of the unchunked
``token_nll(model.logits(h), targets)``, and gradients of gradients work too (the e2e inner loop
differentiates its inner loss twice).

On CUDA, for first-order training, Liger-Kernel's fused linear cross-entropy is used when it is
installed (the optional ``liger`` extra); it never materialises the logits either.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

LOSS_TOKENS = 1024  # tokens per slice: [1024, V] fp32 logits, 0.5 GB at the Llama-3 vocabulary
HAS_LIGER = importlib.util.find_spec("liger_kernel") is not None


def token_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """Unmasked next-token NLL in at least fp32. logits: [B, t, V], targets: [B, t] -> [B, t]."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)


def _slice_nll(h: Tensor, norm: nn.Module, head: Tensor, targets: Tensor) -> Tensor:
    """h: [B, t, D], head: [V, D], targets: [B, t] -> [B, t]."""
    return token_nll(norm(h) @ head.T, targets)


def linear_nll(h: Tensor, norm: nn.Module, head: Tensor, targets: Tensor, *, tokens: int = LOSS_TOKENS,
               fused: bool = False) -> Tensor:
    """NLL of ``targets`` [B, t] under logits ``norm(h) @ head.T`` (h: [B, t, D], head: [V, D]) -> [B, t],
    ``tokens`` positions per slice. ``fused`` allows Liger's kernel (CUDA, first-order gradients only)."""
    if fused and HAS_LIGER and h.is_cuda:
        return _liger_nll(norm(h), head, targets)
    if not torch.is_grad_enabled() or h.shape[1] <= tokens:
        return _slice_nll(h, norm, head, targets)
    pieces = zip(h.split(tokens, dim=1), targets.split(tokens, dim=1))  # [B, tokens, D], [B, tokens]
    return torch.cat([checkpoint(_slice_nll, hp, norm, head, yp, use_reentrant=False) for hp, yp in pieces], dim=1)


def _liger_nll(x: Tensor, head: Tensor, targets: Tensor) -> Tensor:
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    out = liger_fused_linear_cross_entropy(x.flatten(0, 1), head.to(x.dtype), targets.flatten(), reduction="none")
    nll = out[0] if isinstance(out, tuple) else out  # some versions also return the z-loss
    return nll.float().view_as(targets)
