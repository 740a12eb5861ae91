"""Per-token NLL by position: a torchmetrics metric, buckets and a figure."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


class PositionNLL(Metric):
    """Mean NLL at every token position over all evaluated sequences (masked targets excluded).

    ``update(nll [B, T], mask [B, T])``; ``compute()`` -> [T]. Sums are reduced across ranks.
    """

    full_state_update = False

    def __init__(self, seq_len: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.zeros(seq_len, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(seq_len, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, nll: Tensor, mask: Tensor) -> None:
        if nll.shape[-1] != self.total.shape[0]:
            raise ValueError(f"PositionNLL was built for {self.total.shape[0]} positions, got sequences of {nll.shape[-1]}")
        mask = mask.to(torch.float64)
        self.total += (nll.detach().to(torch.float64) * mask).sum(0)
        self.count += mask.sum(0)

    def compute(self) -> Tensor:
        return self.total / self.count.clamp_min(1)


def log2_buckets(seq_len: int, first: int) -> list[tuple[int, int]]:
    """Position buckets [0, first), [first, 2·first), [2·first, 4·first), … clipped to ``seq_len``."""
    edges, edge = [0], max(1, first)
    while edge < seq_len:
        edges.append(edge)
        edge *= 2
    edges.append(seq_len)
    return list(zip(edges[:-1], edges[1:]))


def plot_nll_by_position(curves: dict[str, Tensor], title: str = "NLL by token position", mini_batch: int | None = None):
    """Matplotlib figure of NLL against token index (log x); one line per named curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, curve in curves.items():
        curve = curve.detach().cpu().float()
        positions = torch.arange(1, curve.numel() + 1)
        ax.plot(positions, curve, label=label, linewidth=1)
    if mini_batch:
        ax.axvline(mini_batch, color="grey", linestyle=":", linewidth=1, label=f"first TTT step (b={mini_batch})")
    ax.set_xscale("log")
    ax.set_xlabel("token index")
    ax.set_ylabel("NLL (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
