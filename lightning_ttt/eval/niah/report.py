"""The report: accuracy per task and length with 95% Wilson intervals, split by where the needle lay
relative to the attention window and set against the share of the context the window covers;
the depth grid separately; result files, figures and a markdown table.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from statistics import NormalDist

from lightning_ttt.eval.niah.prompts import GRID, INSIDE, OUTSIDE, RANDOM, STRADDLING
from lightning_ttt.io import atomic_write_text, save_figure

CONFIDENCE = 0.95
REGIONS = (INSIDE, STRADDLING, OUTSIDE)


def wilson_interval(successes: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (successes out of n trials)."""
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def window_fraction(length: int, window: int | None) -> float:
    """The share of a ``length``-token context inside a ``window`` (1 without one): what a model that
    recalls only its window scores on needles placed uniformly (paper Table 2 for fixed-state models)."""
    return 1.0 if window is None else min(1.0, window / length)


def _accuracy(rows: Sequence[dict]) -> dict:
    n = len(rows)
    hits = sum(r["score"] for r in rows)
    low, high = wilson_interval(hits, n)
    return {"n": n, "accuracy": hits / n if n else None, "ci_low": low, "ci_high": high}


def summarize(rows: Sequence[dict], window: int | None) -> dict[str, list[dict]]:
    """``random``: one record per (task, length) with the window split; ``grid``: per (task, length, depth)."""
    random_groups: dict[tuple, list[dict]] = defaultdict(list)
    grid_groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        if row["placement"] == RANDOM:
            random_groups[(row["task"], row["length"])].append(row)
        else:
            grid_groups[(row["task"], row["length"], row["requested_depth"])].append(row)
    random_summary = []
    for (task, length), group in sorted(random_groups.items()):
        record = {"task": task, "length": length, **_accuracy(group), "window": window,
                  "window_fraction": window_fraction(length, window)}
        for where in REGIONS:
            part = [r for r in group if r["region"] == where]
            record[f"n_{where}"] = len(part)
            record[f"acc_{where}"] = sum(r["score"] for r in part) / len(part) if part else None
        random_summary.append(record)
    grid_summary = [{"task": task, "length": length, "depth": depth, **_accuracy(group)}
                    for (task, length, depth), group in sorted(grid_groups.items())]
    return {RANDOM: random_summary, GRID: grid_summary}


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def format_table(summary: dict[str, list[dict]]) -> str:
    """Random-depth accuracy per task and length as markdown, with the window columns."""
    lines = ["| task | length | accuracy [95% CI] | n | window share | inside (n) | straddling (n) | outside (n) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in summary[RANDOM]:
        regions = " | ".join(f"{_fmt(r[f'acc_{w}'])} ({r[f'n_{w}']})" for w in REGIONS)
        lines.append(f"| {r['task']} | {r['length']} | {_fmt(r['accuracy'])} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] "
                     f"| {r['n']} | {r['window_fraction']:.3f} | {regions} |")
    return "\n".join(lines)


def accuracy_figure(summary: dict[str, list[dict]]):
    """Accuracy against length per task (95% intervals), with the window share line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = summary[RANDOM]
    tasks = sorted({r["task"] for r in records})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks):
        rs = sorted((r for r in records if r["task"] == task), key=lambda r: r["length"])
        x = [r["length"] for r in rs]
        acc = [r["accuracy"] for r in rs]
        err = [[a - r["ci_low"] for a, r in zip(acc, rs)], [r["ci_high"] - a for a, r in zip(acc, rs)]]
        ax.errorbar(x, acc, yerr=err, marker="o", capsize=3, label="accuracy (95% CI)")
        ax.plot(x, [r["window_fraction"] for r in rs], "k--", label="share of context in window")
        for where, style in ((INSIDE, "g^:"), (OUTSIDE, "rv:")):
            points = [(r["length"], r[f"acc_{where}"]) for r in rs if r[f"acc_{where}"] is not None]
            if points and any(r[f"n_{OUTSIDE}"] for r in rs):
                ax.plot(*zip(*points), style, alpha=0.6, label=f"needle {where} the window")
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [f"{n // 1024}K" if n % 1024 == 0 else str(n) for n in x])
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("context length (tokens)")
        ax.set_title(task)
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def heatmap(summary: dict[str, list[dict]], task: str):
    """Depth-grid accuracy, depth (rows) x length (columns), for one task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cells = [r for r in summary[GRID] if r["task"] == task]
    lengths = sorted({r["length"] for r in cells})
    depths = sorted({r["depth"] for r in cells})
    grid = np.full((len(depths), len(lengths)), np.nan)
    for r in cells:
        grid[depths.index(r["depth"]), lengths.index(r["length"])] = r["accuracy"]
    fig, ax = plt.subplots(figsize=(1.4 + 0.9 * len(lengths), 1.2 + 0.45 * len(depths)))
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(f"{task}, depth grid (n = {cells[0]['n'] if cells else 0} per cell)")
    for i in range(len(depths)):
        for j in range(len(lengths)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def _csv(records: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: "" if v is None else v for k, v in r.items()} for r in records])
    return buffer.getvalue()


def write_report(rows: Sequence[dict], summary: dict[str, list[dict]], out: str | Path, about: dict,
                 tensorboard: str | None = None) -> list[Path]:
    """samples.jsonl, summary.json, accuracy.csv, accuracy.png, and depth_grid.csv + heatmap_<task>.png
    when a depth grid was run; TensorBoard scalars and figures when asked. Returns the files written."""
    out = Path(out)
    written = []

    def text(name: str, content: str) -> None:
        atomic_write_text(out / name, content)
        written.append(out / name)

    text("samples.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    text("summary.json", json.dumps({**about, "confidence": CONFIDENCE, **summary}, indent=1) + "\n")
    figures = {}
    if summary[RANDOM]:
        text("accuracy.csv", _csv(summary[RANDOM]))
        figures["accuracy"] = accuracy_figure(summary)
    if summary[GRID]:
        text("depth_grid.csv", _csv(summary[GRID]))
        for task in sorted({r["task"] for r in summary[GRID]}):
            figures[f"heatmap_{task}"] = heatmap(summary, task)
    writer = None
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(tensorboard)
        for r in summary[RANDOM]:
            for name in ("accuracy", "window_fraction", *(f"acc_{w}" for w in REGIONS)):
                if r[name] is not None:
                    writer.add_scalar(f"niah/{r['task']}/{name}", r[name], r["length"])
    for name, fig in figures.items():
        if writer is not None:
            writer.add_figure(f"niah/{name}", fig, close=False)
        save_figure(fig, out / f"{name}.png", dpi=100)
        written.append(out / f"{name}.png")
    if writer is not None:
        writer.close()
    return written
