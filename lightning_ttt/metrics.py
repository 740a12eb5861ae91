"""Per-token NLL by position: a torchmetrics metric, log-spaced and fixed-width buckets, reports, a figure.

A leaf of the package (it imports only ``io``): the LightningModule, the evaluation commands and the
sweep report all read their per-position numbers through it.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_ttt.io import atomic_write_json, atomic_write_text

Bucket = tuple[int, int]  # [lo, hi) token positions, 0-based


class PositionCurve(NamedTuple):
    nll: Tensor  # [T] mean NLL at each position over all evaluated sequences
    tokens: Tensor  # [T] how many (unmasked) targets each mean averages


class PositionNLL(Metric):
    """Mean NLL at every token position over all evaluated sequences (masked targets excluded).

    ``update(nll [B, T], mask [B, T])``; ``compute()`` -> ``PositionCurve``. Sums are reduced across ranks.
    """

    full_state_update = False

    def __init__(self, seq_len: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.zeros(seq_len, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(seq_len, dtype=torch.float64), dist_reduce_fx="sum")

    @property
    def seq_len(self) -> int:
        return self.total.shape[0]

    def update(self, nll: Tensor, mask: Tensor) -> None:
        if nll.shape[-1] != self.seq_len:
            raise ValueError(f"PositionNLL was built for {self.seq_len} positions, got sequences of {nll.shape[-1]}")
        mask = mask.to(torch.float64)
        self.total += (nll.detach().to(torch.float64) * mask).sum(0)
        self.count += mask.sum(0)

    def compute(self) -> PositionCurve:
        return PositionCurve(self.total / self.count.clamp_min(1), self.count.clone())


def log2_buckets(seq_len: int, first: int) -> list[Bucket]:
    """Position buckets [0, first), [first, 2·first), [2·first, 4·first), … clipped to ``seq_len``."""
    edges, edge = [0], max(1, first)
    while edge < seq_len:
        edges.append(edge)
        edge *= 2
    edges.append(seq_len)
    return list(zip(edges[:-1], edges[1:]))


def fixed_buckets(seq_len: int, count: int) -> list[Bucket]:
    """``count`` equal-width buckets covering [0, seq_len) (fewer when ``seq_len < count``)."""
    count = max(1, min(count, seq_len))
    edges = [round(i * seq_len / count) for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def bucket_means(curve: PositionCurve, buckets: list[Bucket]) -> list[dict]:
    """Token-weighted mean NLL of each bucket: ``[{"lo", "hi", "nll", "tokens"}]``."""
    rows = []
    for lo, hi in buckets:
        tokens = curve.tokens[lo:hi].sum()
        nll = (curve.nll[lo:hi] * curve.tokens[lo:hi]).sum() / tokens.clamp_min(1)
        rows.append({"lo": lo, "hi": hi, "nll": float(nll), "tokens": int(tokens)})
    return rows


def tail_mean(curve: PositionCurve, last: int) -> float:
    """Token-weighted mean NLL over the last ``last`` positions."""
    return bucket_means(curve, [(max(0, curve.nll.numel() - last), curve.nll.numel())])[0]["nll"]


def position_report(curve: PositionCurve, first_log_bucket: int, fixed_count: int) -> dict:
    """Both bucketings plus the whole per-position curve, ready for JSON."""
    seq_len = curve.nll.numel()
    return {
        "seq_len": seq_len,
        "log_buckets": bucket_means(curve, log2_buckets(seq_len, first_log_bucket)),
        "fixed_buckets": bucket_means(curve, fixed_buckets(seq_len, fixed_count)),
        "nll": [round(float(x), 6) for x in curve.nll],
        "tokens": [int(x) for x in curve.tokens],
    }


def write_position_report(report: dict, stem: str | Path) -> tuple[Path, Path]:
    """``stem.json`` (everything) and ``stem.csv`` (one row per bucket, both kinds), each written atomically."""
    stem = Path(stem)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["buckets", "lo", "hi", "nll", "tokens"])
    for kind in ("log", "fixed"):
        for row in report[f"{kind}_buckets"]:
            writer.writerow([kind, row["lo"], row["hi"], f"{row['nll']:.6f}", row["tokens"]])
    json_path, csv_path = stem.with_suffix(".json"), stem.with_suffix(".csv")
    atomic_write_json(json_path, report)
    atomic_write_text(csv_path, out.getvalue())
    return json_path, csv_path


def log_binned(curve: PositionCurve | Tensor, bins: int = 64) -> tuple[Tensor, Tensor]:
    """A curve averaged over about ``bins`` log-spaced position bins (token-weighted): (1-based centres, NLL).

    Bins are single positions at the start and widen geometrically, so the far end of a 16K
    curve is readable on a log axis.
    """
    nll, tokens = (curve.nll, curve.tokens) if isinstance(curve, PositionCurve) else (torch.as_tensor(curve), None)
    nll = nll.detach().cpu().double()
    tokens = torch.ones_like(nll) if tokens is None else tokens.detach().cpu().double()
    length = nll.numel()
    geometric = torch.logspace(0, torch.log10(torch.tensor(float(length))), bins).floor().long()
    edges = torch.unique(torch.cat([torch.tensor([0]), geometric.clamp(1, length), torch.tensor([length])]))
    positions, means = [], []
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
        weight = tokens[lo:hi]
        if weight.sum() > 0:
            positions.append((lo + hi + 1) / 2)  # 1-based centre
            means.append(float((nll[lo:hi] * weight).sum() / weight.sum()))
    return torch.tensor(positions), torch.tensor(means)


def plot_nll_by_position(curves: dict[str, PositionCurve | Tensor], title: str = "NLL by token position",
                         mini_batch: int | None = None, window: int | None = None, bins: int = 64, ax=None):
    """Matplotlib figure of NLL against token index (log x, log-binned); one line per named curve.

    Draws into ``ax`` when given (its figure is returned), else into a new figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4)) if ax is None else (ax.figure, ax)
    for label, curve in curves.items():
        positions, nll = log_binned(curve, bins)
        ax.plot(positions, nll, label=label, linewidth=1)
    if mini_batch:
        ax.axvline(mini_batch, color="grey", linestyle=":", linewidth=1, label=f"first TTT step (b={mini_batch})")
    if window:
        ax.axvline(window, color="grey", linestyle="--", linewidth=1, label=f"window k={window}")
    ax.set_xscale("log")
    ax.set_xlabel("token index")
    ax.set_ylabel("NLL (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
