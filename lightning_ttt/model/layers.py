"""Building blocks: RMSNorm computed in fp32, RoPE (interleaved or half-split pairs, cached tables), SwiGLU with
swappable weights."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.RMSNorm):
    """``torch.nn.RMSNorm`` that normalises in at least fp32 and returns the input dtype."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.float32, torch.float64):
            return super().forward(x)
        weight = None if self.weight is None else self.weight.float()  # bf16 weights (an exported model) too
        return F.rms_norm(x.float(), self.normalized_shape, weight, self.eps).to(x.dtype)


class Llama3Scaling(NamedTuple):
    """Llama 3.1's RoPE frequency scaling: long wavelengths stretched by ``factor``, short ones kept,
    a smooth blend between ``original_max_positions / high_freq_factor`` and ``/ low_freq_factor``."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_positions: int

    def apply(self, inv_freq: Tensor) -> Tensor:
        wavelength = 2 * math.pi / inv_freq
        context = self.original_max_positions
        blend = (context / wavelength - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
        blended = (1 - blend) * inv_freq / self.factor + blend * inv_freq
        scaled = torch.where(wavelength > context / self.low_freq_factor, inv_freq / self.factor, blended)
        return torch.where(wavelength < context / self.high_freq_factor, inv_freq, scaled)


MAX_CACHED_POSITIONS = 1 << 16  # rotary tables are kept for positions below this; beyond, a moving window of as many
_TABLES: dict[tuple, tuple[Tensor, Tensor]] = {}  # (hd, theta, half, scaling, device, work dtype) -> cos2, sin2
_FAR_TABLES: dict[tuple, tuple[int, Tensor, Tensor]] = {}  # the same key -> first position, cos2, sin2


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def rope_tables(positions: Tensor, hd: int, theta: float, half: bool = False, scaling: Llama3Scaling | None = None,
                dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """The factors of the rotation at ``positions`` [t]: cos2, sin2 [t, hd] in ``dtype`` (fp32 or fp64),
    laid out so that ``x * cos2 + swap(x) * sin2`` rotates every dimension pair (see ``rope``)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, hd, 2, device=positions.device, dtype=dtype) / hd)  # [hd/2]
    if scaling is not None:
        inv_freq = scaling.apply(inv_freq)
    angles = positions.to(dtype)[:, None] * inv_freq  # [t, hd/2]
    cos, sin = angles.cos(), angles.sin()
    if half:
        return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)  # [t, hd]: c0 c1 .. c0 c1 ..
    return (torch.stack((cos, cos), dim=-1).flatten(-2),  # [t, hd]: c0 c0 c1 c1 ...
            torch.stack((-sin, sin), dim=-1).flatten(-2))  # [t, hd]: -s0 s0 -s1 s1 ...


def _rotate(x: Tensor, cos2: Tensor, sin2: Tensor, half: bool) -> Tensor:
    """x [..., t, hd] rotated by tables [t, hd]; computed in the tables' dtype, returned in x's."""
    dtype, hd = x.dtype, x.shape[-1]
    x = x.to(cos2.dtype)
    if half:
        swapped = torch.cat((x[..., hd // 2:], x[..., : hd // 2]), dim=-1)  # [..., t, hd]: halves (a, b) -> (b, a)
    else:
        swapped = x.unflatten(-1, (hd // 2, 2)).flip(-1).flatten(-2)  # [..., t, hd]: pairs (a, b) -> (b, a)
    # pair (a, b) -> (a cos - b sin, b cos + a sin): bit-identical to the pairwise form, fewer passes over x
    return (x * cos2 + swapped * sin2).to(dtype)


def rope(x: Tensor, positions: Tensor, theta: float, half: bool = False, scaling: Llama3Scaling | None = None) -> Tensor:
    """Rotary embedding: dimension pair j rotates by ``pos * theta**(-2j/hd)`` (optionally Llama-3 scaled).

    The pairs are ``(2j, 2j+1)`` (interleaved, the default) or ``(j, j + hd/2)`` with ``half=True``
    (Hugging Face Llama's rotate_half layout). x: [..., t, hd]; positions: [t]. Angles and rotation
    run in fp32 (fp64 for fp64 inputs).
    """
    cos2, sin2 = rope_tables(positions, x.shape[-1], theta, half, scaling, _work_dtype(x.dtype))
    return _rotate(x, cos2, sin2, half)


class Rotary(NamedTuple):
    """RoPE of one model, for contiguous positions: tables computed once per device and dtype and grown on
    demand (to a power of two, up to ``MAX_CACHED_POSITIONS``), shared by every layer and model alike."""

    theta: float
    half: bool = False
    scaling: Llama3Scaling | None = None

    def tables(self, start: int, length: int, hd: int, device: torch.device,
               dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos2, sin2 [length, hd] of positions start .. start+length-1 (``dtype``: the work dtype)."""
        stop = start + length
        key = (hd, *self, device, dtype)
        if stop <= MAX_CACHED_POSITIONS:
            cached = _TABLES.get(key)
            if cached is None or cached[0].shape[0] < stop:
                size = min(MAX_CACHED_POSITIONS, max(1024, 1 << (stop - 1).bit_length()))
                cached = _TABLES[key] = self._rows(0, size, hd, device, dtype)
            return cached[0][start:stop], cached[1][start:stop]
        # beyond: a window of MAX_CACHED_POSITIONS starting at a multiple of half of it, so that reading left to
        # right recomputes it once per half window, not per call
        step = MAX_CACHED_POSITIONS // 2
        if length > step:
            return self._rows(start, length, hd, device, dtype)
        base = start // step * step  # [base, base + 2·step) holds start .. stop - 1
        cached = _FAR_TABLES.get(key)
        if cached is None or cached[0] != base:
            cached = _FAR_TABLES[key] = (base, *self._rows(base, 2 * step, hd, device, dtype))
        return cached[1][start - base:stop - base], cached[2][start - base:stop - base]

    def _rows(self, first: int, count: int, hd: int, device: torch.device,
              dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos2, sin2 [count, hd] of positions first .. first+count-1: ordinary tensors, usable in any later graph."""
        with torch.inference_mode(False), torch.no_grad():
            return rope_tables(torch.arange(first, first + count, device=device), hd, self.theta, self.half,
                               self.scaling, dtype)

    def __call__(self, x: Tensor, start: int = 0) -> Tensor:
        """x [..., t, hd] rotated at the absolute positions start .. start+t-1."""
        cos2, sin2 = self.tables(start, x.shape[-2], x.shape[-1], x.device, _work_dtype(x.dtype))
        return _rotate(x, cos2, sin2, self.half)


def swiglu(x: Tensor, w1: Tensor, w2: Tensor, w3: Tensor) -> Tensor:
    """``(silu(x W1ᵀ) ⊙ x W3ᵀ) W2ᵀ`` with weights stored as [out, in].

    Weights may carry a leading batch dim ([B, out, in], one set per sequence, x: [B, t, in]).
    """
    return (F.silu(x @ w1.mT) * (x @ w3.mT)) @ w2.mT


class SwiGLU(nn.Module):
    """SwiGLU MLP; ``forward`` optionally takes replacement (fast) weights."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, hidden, bias=False)
        self.w3 = nn.Linear(d_model, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d_model, bias=False)

    def weights(self) -> dict[str, Tensor]:
        return {"w1": self.w1.weight, "w2": self.w2.weight, "w3": self.w3.weight}

    def forward(self, x: Tensor, weights: dict[str, Tensor] | None = None) -> Tensor:
        w = weights if weights is not None else self.weights()
        return swiglu(x, w["w1"], w["w2"], w["w3"])
