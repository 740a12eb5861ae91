"""Building blocks: RMSNorm computed in fp32, interleaved-pair RoPE, SwiGLU with swappable weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.RMSNorm):
    """``torch.nn.RMSNorm`` that normalises in at least fp32 and returns the input dtype."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.float32, torch.float64):
            return super().forward(x)
        return super().forward(x.float()).to(x.dtype)


def rope(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """Rotary embedding, interleaved-pairs variant: dims (2j, 2j+1) rotate by ``pos * theta**(-2j/hd)``.

    x: [..., t, hd]; positions: [t]. Angles and rotation run in fp32 (fp64 for fp64 inputs).
    """
    dtype, hd = x.dtype, x.shape[-1]
    work = torch.float64 if dtype == torch.float64 else torch.float32
    inv_freq = 1.0 / theta ** (torch.arange(0, hd, 2, device=x.device, dtype=work) / hd)  # [hd/2]
    angles = positions.to(work)[:, None] * inv_freq  # [t, hd/2]
    cos, sin = angles.cos(), angles.sin()
    cos2 = torch.stack((cos, cos), dim=-1).flatten(-2)  # [t, hd]: c0 c0 c1 c1 ...
    sin2 = torch.stack((-sin, sin), dim=-1).flatten(-2)  # [t, hd]: -s0 s0 -s1 s1 ...
    x = x.to(work)
    swapped = x.unflatten(-1, (hd // 2, 2)).flip(-1).flatten(-2)  # [..., t, hd]: pairs (a, b) -> (b, a)
    # pair (a, b) -> (a cos - b sin, b cos + a sin): bit-identical to the pairwise form, fewer passes over x
    return (x * cos2 + swapped * sin2).to(dtype)


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
