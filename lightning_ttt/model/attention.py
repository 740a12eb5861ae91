"""Causal and sliding-window attention behind one call, with kernels chosen by capability.

Kernels (``kernel=`` argument):

* ``"sdpa"``       PyTorch's fused scaled-dot-product attention (first-order gradients only);
* ``"math"``       SDPA forced onto its math backend — the only SDPA path that supports
                   gradients of gradients, used for suffix blocks during meta-learning;
* ``"explicit"``   written-out masked softmax in fp32: slow, obviously correct, double-backward safe;
* ``"flash_attn"`` Dao-AILab flash-attn (CUDA, fp16/bf16). It silently drops second-order terms,
                   so it is only ever used where first-order gradients suffice.

Whole-sequence sliding-window attention walks the queries in blocks, so memory is O(T·k):
no T×T score matrix or mask is ever built.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

QUERY_BLOCK = 1024  # queries per block in blockwise sliding-window attention


@functools.cache
def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def window_mask(q_pos: Tensor, k_pos: Tensor, window: int | None) -> Tensor:
    """Bool mask [tq, tk], True where query may attend: ``0 <= q - k < window`` and ``k >= 0``."""
    delta = q_pos[:, None] - k_pos[None, :]
    allowed = (delta >= 0) & (k_pos[None, :] >= 0)
    if window is not None:
        allowed &= delta < window
    return allowed


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, kernel: str, causal: bool = False) -> Tensor:
    """Softmax attention. q: [B, H, tq, hd]; k, v: [B, H, tk, hd]; mask: bool [tq, tk] or None."""
    if kernel == "explicit":
        scores = (q @ k.mT).to(torch.promote_types(q.dtype, torch.float32)) / math.sqrt(q.shape[-1])  # [B, H, tq, tk]
        if causal:
            mask = window_mask(torch.arange(q.shape[-2], device=q.device), torch.arange(k.shape[-2], device=q.device), None)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return (scores.softmax(-1).to(v.dtype)) @ v
    if kernel == "math":
        with sdpa_kernel([SDPBackend.MATH]):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    if kernel == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    raise ValueError(f"attend: unsupported kernel {kernel!r}")


def _flash_attn_sequence(q: Tensor, k: Tensor, v: Tensor, window: int | None) -> Tensor:
    from flash_attn import flash_attn_func

    if q.dtype not in (torch.float16, torch.bfloat16):
        q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    window_size = (-1, -1) if window is None else (window - 1, 0)
    # flash-attn wants [B, T, H, hd]
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True, window_size=window_size)
    return out.transpose(1, 2)


def sequence_attention(q: Tensor, k: Tensor, v: Tensor, window: int | None, kernel: str = "sdpa") -> Tensor:
    """Causal (``window=None``) or sliding-window attention of a whole sequence.

    q, k, v: [B, H, T, hd], already rotated with absolute positions 0..T-1. Returns [B, H, T, hd].
    A query at position p sees keys p-window+1 .. p.
    """
    seq_len = q.shape[-2]
    if kernel == "flash_attn":
        return _flash_attn_sequence(q, k, v, window).to(q.dtype)
    if window is None or seq_len <= window:
        if kernel == "sdpa":
            return attend(q, k, v, None, kernel, causal=True)
        window = seq_len if window is None else window
    block = min(QUERY_BLOCK, window) if window is not None else QUERY_BLOCK
    positions = torch.arange(seq_len, device=q.device)
    outputs = []
    for start in range(0, seq_len, block):
        stop = min(start + block, seq_len)
        lo = max(0, start - window + 1)
        mask = window_mask(positions[start:stop], positions[lo:stop], window)  # [tq, tk]
        outputs.append(attend(q[..., start:stop, :], k[..., lo:stop, :], v[..., lo:stop, :], mask, kernel))
    return torch.cat(outputs, dim=-2)
