"""A sweep's results: ``summary.jsonl``, ``summary.md`` (the loss table), comparison figures (PNG +
TensorBoard) and the hparams table.

Everything here is derived from the finished evaluations on disk, so it is rebuilt from scratch
after every evaluation and by ``load_summary`` in notebooks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from lightning_ttt.eval.context import RESULT
from lightning_ttt.io import atomic_write_text, save_figure
from lightning_ttt.metrics import PositionCurve, plot_nll_by_position
from lightning_ttt.sweep.plan import Evaluation, Step, read_marker
from lightning_ttt.sweep.spec import SweepSpec

SUMMARY = "summary.jsonl"
TABLE = "summary.md"


def collect(steps: list[Step], out: Path) -> list[dict[str, Any]]:
    """One row per finished evaluation, in plan order, with the difference to full attention."""
    rows = []
    for ev in (s for s in steps if isinstance(s, Evaluation)):
        marker = read_marker(out, ev)
        if marker is None:
            continue
        result = json.loads((out / ev.results / RESULT).read_text())["rows"][0]
        fit_marker = read_marker(out, ev.fit)
        rows.append({
            "point": ev.name, "combo": ev.combo, "method": ev.method, "grid": ev.point, "stage": ev.stage,
            "seq_len": ev.seq_len, **{k: result[k] for k in ("loss", "nll", "ppl", "last_loss", "last_tokens",
                                                               "windows", "tokens")},
            "checkpoint": ev.fit.checkpoint,
            "fit_seconds": None if fit_marker is None else fit_marker["seconds"],
            "eval_seconds": marker["seconds"],
            "per_position": f"{ev.results}/nll_by_position-{ev.seq_len:06d}.json",
        })
    full = {(json.dumps(r["grid"], sort_keys=True), r["seq_len"]): r for r in rows if r["method"] == "fa"}
    for row in rows:
        fa = full.get((json.dumps(row["grid"], sort_keys=True), row["seq_len"]))
        row["loss_delta_fa"] = None if fa is None else row["loss"] - fa["loss"]
        row["last_loss_delta_fa"] = None if fa is None else row["last_loss"] - fa["last_loss"]
    return rows


def load_summary(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a sweep's ``summary.jsonl``."""
    path = Path(sweep_dir) / SUMMARY
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `ttt sweep` first (it writes the summary after each evaluation)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_position_curve(sweep_dir: str | Path, row: dict[str, Any]) -> PositionCurve:
    report = json.loads((Path(sweep_dir) / row["per_position"]).read_text())
    return PositionCurve(torch.tensor(report["nll"], dtype=torch.float64), torch.tensor(report["tokens"], dtype=torch.float64))


def write_report(spec: SweepSpec, steps: list[Step], out: Path) -> list[dict[str, Any]]:
    """Rewrite summary.jsonl, summary.md, figures/*.png and the TensorBoard summary/hparams runs."""
    rows = collect(steps, out)
    atomic_write_text(out / SUMMARY, "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_text(out / TABLE, markdown_table(rows))
    if not rows:
        return rows
    figures = {"loss_vs_context": loss_figure(rows), "loss_delta_vs_fa": delta_figure(rows),
               "nll_by_position": position_figure(out, rows)}
    _write_tensorboard(out / "runs", rows, figures, spec.name)
    for name, fig in figures.items():
        if fig is not None:
            save_figure(fig, out / "figures" / f"{name}.png")
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Loss (nats/token) per length and method, then each method minus full attention, overall and over
    the last tokens of each sequence; one row per length."""
    combos = list(dict.fromkeys(r["combo"] for r in rows))
    cell = {(r["combo"], r["seq_len"]): r for r in rows}
    others = [c for c in combos if any(r["combo"] == c and r["method"] != "fa" and r["loss_delta_fa"] is not None
                                       for r in rows)]
    last = sorted({r["last_tokens"] for r in rows})
    header = ["length", *combos, *(f"{c} − fa" for c in others),
              *(f"{c} − fa, last {'/'.join(map(str, last))} tokens" for c in others)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for length in sorted({r["seq_len"] for r in rows}):
        row = [cell.get((c, length)) for c in combos + others + others]
        keys = ["loss"] * len(combos) + ["loss_delta_fa"] * len(others) + ["last_loss_delta_fa"] * len(others)
        values = [_number(None if r is None else r[k]) for r, k in zip(row, keys)]
        lines.append("| " + " | ".join([_length(length), *values]) + " |")
    return "\n".join(lines) + "\n"


def _length(tokens: int) -> str:
    return f"{tokens // 1024}K" if tokens % 1024 == 0 else str(tokens)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}".replace("-", "−")


def _by_combo(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: r["seq_len"]):
        groups.setdefault(row["combo"], []).append(row)
    return groups


def _axes(title: str, ylabel: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig, ax


def loss_figure(rows: list[dict[str, Any]]):
    """Mean loss at each context length, one line per method (paper Fig 9)."""
    fig, ax = _axes("Loss vs context length", "loss (nats/token)")
    for combo, group in _by_combo(rows).items():
        ax.plot([r["seq_len"] for r in group], [r["loss"] for r in group], marker="o", label=combo)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def delta_figure(rows: list[dict[str, Any]]):
    """Loss minus full attention's at each length (paper Fig 1 left); below zero is better than FA."""
    fig, ax = _axes("Loss difference to full attention", "loss − full attention (nats/token)")
    ax.axhline(0.0, color="black", linewidth=1, label="full attention")
    for combo, group in _by_combo(rows).items():
        group = [r for r in group if r["loss_delta_fa"] is not None and r["method"] != "fa"]
        if group:
            ax.plot([r["seq_len"] for r in group], [r["loss_delta_fa"] for r in group], marker="o", label=combo)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def position_figure(out: Path, rows: list[dict[str, Any]]):
    """NLL by token position at the longest length every method reached (paper Fig 6)."""
    groups = _by_combo(rows)
    common = set.intersection(*({r["seq_len"] for r in g} for g in groups.values()))
    if not common:
        return None
    length = max(common)
    curves = {combo: load_position_curve(out, next(r for r in g if r["seq_len"] == length))
              for combo, g in groups.items()}
    return plot_nll_by_position(curves, title=f"NLL by token position, models at {length} tokens")


def _write_tensorboard(runs: Path, rows: list[dict[str, Any]], figures: dict[str, Any], name: str) -> None:
    """``runs/summary/<combo>``: loss vs length as scalars (step = context length) and the figures;
    ``runs/hparams/<point>``: one hparams entry per evaluated point for TensorBoard's HPARAMS tab."""
    from torch.utils.tensorboard import SummaryWriter

    for derived in ("summary", "hparams"):
        shutil.rmtree(runs / derived, ignore_errors=True)
    for combo, group in _by_combo(rows).items():
        with SummaryWriter(str(runs / "summary" / combo)) as writer:
            for r in group:
                writer.add_scalar("context/loss", r["loss"], r["seq_len"])
                writer.add_scalar("context/last_loss", r["last_loss"], r["seq_len"])
                if r["loss_delta_fa"] is not None:
                    writer.add_scalar("context/loss_delta_fa", r["loss_delta_fa"], r["seq_len"])
    with SummaryWriter(str(runs / "summary" / "figures")) as writer:
        for tag, fig in figures.items():
            if fig is not None:
                writer.add_figure(f"{name}/{tag}", fig, close=False)
    for r in rows:
        hparams = {"method": r["method"], "stage": r["stage"], "seq_len": r["seq_len"],
                   **{k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in r["grid"].items()}}
        metrics = {"hparam/loss": r["loss"], "hparam/last_loss": r["last_loss"], "hparam/ppl": r["ppl"]}
        if r["loss_delta_fa"] is not None:
            metrics["hparam/loss_delta_fa"] = r["loss_delta_fa"]
        with SummaryWriter(str(runs / "hparams" / r["point"])) as writer:
            writer.add_hparams(hparams, metrics, run_name=".")
