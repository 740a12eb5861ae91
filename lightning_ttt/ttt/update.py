"""The inner optimiser as pure functions: differentiable global-norm clipping and SGD.

Everything is batched over sequences: each tensor in a fast-weight dict is [B, ...] and every
sequence is clipped and updated on its own, exactly like a vmap over sequences.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from lightning_ttt.config import ModelConfig
from lightning_ttt.model.transformer import FastWeights

# (fast weights, their gradients) -> (new fast weights, pre-clipping gradient norm [B])
UpdateFn = Callable[[FastWeights, FastWeights], tuple[FastWeights, Tensor]]


def global_norm(grads: FastWeights) -> Tensor:
    """L2 norm over all tensors together, one value per sequence. {[B, ...]} -> [B].

    Differentiable everywhere: a zero gradient (a chunk whose targets are all masked) gets norm 0
    with derivative 0 instead of sqrt's infinite slope, which would turn the meta-gradient into NaN.
    A non-finite gradient gives a non-finite norm (``!= 0``, not ``> 0``: NaN compares false to
    everything, and ``> 0`` reported it as 0).
    """
    flat = torch.cat([g.flatten(1) for g in grads.values()], dim=1)  # [B, N]: one reduction for all tensors
    squared = torch.linalg.vecdot(flat, flat)  # [B]
    nonzero = squared != 0
    return torch.where(nonzero, torch.where(nonzero, squared, 1.0).sqrt(), 0.0)


def clip_scale(norm: Tensor, clip: float) -> Tensor:
    """1 when ``norm < clip``, else ``clip / norm`` — no epsilon, differentiable in both branches."""
    return clip / norm.clamp_min(clip)


def sgd_step(fast: FastWeights, grads: FastWeights, lr: float, clip: float) -> tuple[FastWeights, Tensor]:
    """``Φ ← Φ − lr · clip(g)``; returns the new weights and the pre-clipping norms [B]."""
    norm = global_norm(grads)
    scale = lr * clip_scale(norm, clip)  # [B]
    new = {}
    for name, w in fast.items():
        # w - scale·g in one fused op (and one backward node) per tensor
        new[name] = torch.addcmul(w, scale.view(-1, *([1] * (w.dim() - 1))).to(w.dtype), grads[name], value=-1)
    return new, norm


def effective_inner_lr(lr: float, ilr_init: float, warmup_steps: int, step: int | None) -> float:
    """Inner lr after the outer-step warm-up: ilr_init → lr over ``warmup_steps`` outer steps.

    ``step`` is the 0-based outer step; ``None`` means evaluation (fully warmed up).
    """
    if warmup_steps <= 0 or step is None:
        return lr
    return ilr_init + (lr - ilr_init) * min(1.0, (step + 1) / warmup_steps)


def make_update(cfg: ModelConfig, outer_step: int | None = None) -> UpdateFn:
    """The inner optimiser step of ``cfg``: clipped SGD at the inner lr of 0-based outer step
    ``outer_step`` (None: evaluation and inference, fully warmed up)."""
    lr = effective_inner_lr(cfg.inner_lr, cfg.ilr_init, cfg.ilr_warmup_steps, outer_step)
    return partial(sgd_step, lr=lr, clip=cfg.inner_clip)
