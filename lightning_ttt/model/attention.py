"""Causal and sliding-window attention behind one call, with kernels chosen by capability.

Kernels (``kernel=`` argument):

* ``"sdpa"``       PyTorch's fused scaled-dot-product attention (first-order gradients only);
* ``"math"``       SDPA forced onto its math backend — the only SDPA path that supports
                   gradients of gradients, used for suffix blocks during meta-learning;
* ``"explicit"``   written-out masked softmax in fp32: slow, obviously correct, double-backward safe;
* ``"flash_attn"`` Dao-AILab flash-attn (CUDA, fp16/bf16). It silently drops second-order terms,
                   so it is only ever used where first-order gradients suffice.

Whole-sequence sliding-window attention walks the queries in blocks, so memory is O(T·k):
no T×T score matrix or mask is ever built. Masks are additive constants cached per shape
(``band_bias``), so the backward pass keeps one shared copy rather than one per block or chunk.
"""

from __future__ import annotations

import functools
import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

QUERY_BLOCK = 256  # queries per block in blockwise sliding-window attention (each sees block + k - 1 keys)


@functools.cache
def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def choose_kernel(requested: str, *, whole_sequence: bool, double_backward: bool = False,
                  on_cuda: bool = False) -> str:
    """The kernel for one attention call, from ``ModelConfig.attention_kernel`` and what the call needs.

    ``explicit`` is always honoured; gradients of gradients need SDPA's math path; chunks attending
    into a cache use SDPA with a mask; whole sequences use flash-attn when asked for (or, with
    ``auto``, when installed on CUDA), else SDPA.
    """
    if requested == "explicit":
        return "explicit"
    if double_backward:
        return "math"
    if requested == "flash_attn" and not flash_attn_available():
        raise ValueError("attention_kernel='flash_attn' needs the flash-attn package and a CUDA device")
    if whole_sequence and requested in ("auto", "flash_attn") and on_cuda and flash_attn_available():
        return "flash_attn"
    return "sdpa"


def window_mask(q_pos: Tensor, k_pos: Tensor, window: int | None) -> Tensor:
    """Bool mask [tq, tk], True where query may attend: ``0 <= q - k < window`` and ``k >= 0``."""
    delta = q_pos[:, None] - k_pos[None, :]
    allowed = (delta >= 0) & (k_pos[None, :] >= 0)
    if window is not None:
        allowed &= delta < window
    return allowed


@functools.lru_cache(maxsize=16)
def band_bias(tq: int, tk: int, offset: int, window: int | None, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Additive mask [tq, tk]: 0 where query i (at key index ``offset + i``) may attend key j, i.e.
    ``0 <= offset + i - j < window``, and -inf elsewhere.

    Cached, so every block and chunk of one shape shares one constant: autograd then saves a reference
    to it, where a boolean mask is converted to a fresh float copy by SDPA, and saved, at every call.
    """
    with torch.inference_mode(False), torch.no_grad():  # an ordinary tensor, usable in any later graph
        allowed = window_mask(torch.arange(offset, offset + tq, device=device), torch.arange(tk, device=device), window)
        return as_bias(allowed, dtype)


def as_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Boolean mask (True: allowed) -> additive mask (0 / -inf) in ``dtype``."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, kernel: str, causal: bool = False) -> Tensor:
    """Softmax attention. q: [B, H, tq, hd]; k, v: [B, Hkv, tk, hd]; mask: [tq, tk], boolean (True: allowed) or
    additive (0 / -inf, in q's dtype), or None.

    With grouped-query attention (Hkv < H) key/value head g serves query heads g·G .. g·G+G-1
    (G = H / Hkv), the grouping of Hugging Face's ``repeat_kv``; keys and values are never copied per head.
    """
    gqa = k.shape[1] != q.shape[1]
    if kernel == "explicit":
        if gqa:  # [B, Hkv, G, tq, hd] against [B, Hkv, 1, tk, hd]: broadcast instead of repeating k and v
            out = attend(q.unflatten(1, (k.shape[1], -1)), k.unsqueeze(2), v.unsqueeze(2), mask, kernel, causal)
            return out.flatten(1, 2)  # [B, Hkv, G, tq, hd] -> [B, H, tq, hd]
        scores = (q @ k.mT).to(torch.promote_types(q.dtype, torch.float32)) / math.sqrt(q.shape[-1])  # [B, H, tq, tk]
        if causal:
            mask = window_mask(torch.arange(q.shape[-2], device=q.device), torch.arange(k.shape[-2], device=q.device), None)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        return (scores.softmax(-1).to(v.dtype)) @ v
    if kernel == "math":
        with sdpa_kernel([SDPBackend.MATH]):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)
    if kernel == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)
    raise ValueError(f"attend: unsupported kernel {kernel!r}")


def chunk_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, past: int | None, kernel: str,
                    causal_past: bool = False) -> Tensor:
    """A chunk of queries q [B, H, C, hd] against its keys k, v [B, Hkv, tk, hd], allowed by ``mask`` [C, tk].

    ``causal_past``: the keys are [older keys ; the chunk's own] with the own ones from index ``past``
    on and every older key visible to every query (full attention). Then, without gradients, no
    [C, tk] mask is built: flash-attn or SDPA align the causal mask to the bottom right on CUDA, and on
    the CPU the older and own keys are attended separately and merged by their log-sum-exps. A
    ``causal_past`` chunk may come without a mask; it is built (cached) only where a kernel needs one.
    """
    chunk = q.shape[-2]
    fused = causal_past and past and chunk > 1 and kernel != "explicit" and not (
        torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
    if not fused:
        if mask is None and causal_past and past is not None and chunk > 1:
            if past == 0:  # no older keys: plain causal attention
                return attend(q, k, v, None, kernel, causal=True)
            mask = band_bias(chunk, k.shape[-2], past, None, q.dtype, q.device)  # [C, tk]: older keys, own causally
        return attend(q, k, v, mask, kernel)
    if q.is_cuda:
        if flash_attn_available():
            return _flash_attn_sequence(q, k, v, None).to(q.dtype)  # flash-attn's causal mask is bottom-right aligned
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(chunk, k.shape[-2]),
                                              enable_gqa=k.shape[1] != q.shape[1])
    if not hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return attend(q, k, v, mask, kernel)
    return _merged_past_and_own(q, k, v, past)


def _merged_past_and_own(q: Tensor, k: Tensor, v: Tensor, past: int) -> Tensor:
    """Softmax over [past keys (all visible) ; own keys (causal)] from two fused CPU calls and their log-sum-exps."""
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    batch, heads, chunk, hd = q.shape
    groups = heads // k.shape[1]
    # older keys: no mask, so a group's query heads can share one call as a longer query sequence
    grouped = q.unflatten(1, (k.shape[1], groups)).flatten(2, 3)  # [B, H, C, hd] -> [B, Hkv, G·C, hd]
    out_past, lse_past = flash(grouped, k[:, :, :past], v[:, :, :past])[:2]
    out_past = out_past.unflatten(2, (groups, chunk)).flatten(1, 2)  # [B, Hkv, G·C, hd] -> [B, H, C, hd]
    lse_past = lse_past.unflatten(2, (groups, chunk)).flatten(1, 2)  # [B, H, C]
    k_own, v_own = (t[:, :, past:].repeat_interleave(groups, dim=1) for t in (k, v))  # [B, H, C, hd]
    out_own, lse_own = flash(q, k_own, v_own, is_causal=True)[:2]
    top = torch.maximum(lse_past, lse_own)
    w_past, w_own = (lse_past - top).exp(), (lse_own - top).exp()  # [B, H, C]
    out = (out_past * w_past[..., None] + out_own * w_own[..., None]) / (w_past + w_own)[..., None]
    return out.to(q.dtype)


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

    q: [B, H, T, hd]; k, v: [B, Hkv, T, hd] (Hkv divides H), already rotated with absolute positions
    0..T-1. Returns [B, H, T, hd].
    A query at position p sees keys p-window+1 .. p.
    """
    seq_len = q.shape[-2]
    if kernel == "flash_attn":
        return _flash_attn_sequence(q, k, v, window).to(q.dtype)
    if window is None or seq_len <= window:
        if kernel == "sdpa":
            return attend(q, k, v, None, kernel, causal=True)
        window = seq_len if window is None else window
    block = min(QUERY_BLOCK, window)
    span = block + window - 1  # keys of a full query block
    first = -(-(window - 1) // block)  # index of the first query block with a full span of keys
    skip = first * block - window + 1  # where that span starts
    k_spans, v_spans = _spans(k, span, block, skip), _spans(v, span, block, skip)
    bias = partial(band_bias, window=window, dtype=q.dtype, device=q.device)
    full = bias(block, span, window - 1)  # [block, span]: a full block; query i sits at key index window - 1 + i
    outputs = []
    for i, q_block in enumerate(q.split(block, dim=-2)):  # [B, H, <=block, hd]
        start = i * block
        stop, lo = start + q_block.shape[-2], max(0, start - window + 1)
        if stop - lo == span:  # keys lo..stop-1 are span i - first
            keys, values = k_spans[i - first], v_spans[i - first]
        else:  # blocks inside the first window, and a short last block
            keys, values = k[..., lo:stop, :], v[..., lo:stop, :]
        # a full-size block's mask is the right end of the full one (a view: no mask of its own to keep)
        mask = full[:, span - (stop - lo):] if stop - start == block else bias(stop - start, stop - lo, start - lo)
        outputs.append(attend(q_block, keys, values, mask, kernel))  # mask: [tq, tk]
    return torch.cat(outputs, dim=-2)


def _spans(x: Tensor, span: int, step: int, skip: int) -> tuple[Tensor, ...]:
    """Views x[..., skip + j*step : skip + j*step + span, :] for every j that fits, each [B, H, span, hd].

    One unfold instead of a slice per block: the backward then gathers all spans into one gradient,
    where slicing would zero-fill a whole [B, H, T, hd] gradient per block.
    """
    x = x[..., skip:, :]
    if x.shape[-2] < span:
        return ()
    return x.unfold(-2, span, step).transpose(-1, -2).unbind(2)  # [B, H, n, hd, span] -> n x [B, H, span, hd]
