"""Print the README's markdown table from bench-results/summary.json (``make bench``).

    python -m benchmarks.table [bench-results/summary.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

METHODS = ("fa", "swa", "e2e")


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _length(t: str) -> str:
    n = int(t)
    return f"{n // 1048576}M" if n % 1048576 == 0 else f"{n // 1024}K" if n % 1024 == 0 else str(n)


def table(summary: dict) -> str:
    """Markdown: one row per measurement, one column per length."""
    train, infer, meta = summary.get("train"), summary.get("infer"), summary.get("meta", {})
    lines = []

    def section(title: str, rows: list[tuple[str, dict, str]]) -> None:
        lengths = sorted({t for _, values, _ in rows for t in values}, key=int)
        lines.append(f"| {title} | " + " | ".join(_length(t) for t in lengths) + " |")
        lines.append("|---|" + "---:|" * len(lengths))
        for label, values, spec in rows:
            lines.append(f"| {label} | " + " | ".join(_fmt(values.get(t), spec) for t in lengths) + " |")
        lines.append("")

    if train:
        section("training step (T)", [("e2e / fa", train["e2e_over_fa"], ".2f"), ("e2e / swa", train["e2e_over_swa"], ".2f"),
                                      ("e2e / fa in FLOPs", train.get("flops_e2e_over_fa", {}), ".2f"),
                                      ("e2e / swa in FLOPs", train.get("flops_e2e_over_swa", {}), ".2f")]
                + [(f"{m} s/step", train["s_per_step"][m], ".3f") for m in METHODS]
                + [(f"{m} peak MB", train["peak_mb"][m], ".0f") for m in METHODS])
    if infer:
        section("inference (context)", [(f"{m} prefill s/1K", infer["prefill_s_per_1k"][m], ".3f") for m in METHODS]
                + [("fa whole-sequence forward s/1K", infer.get("fa_whole_forward_s_per_1k", {}), ".3f")]
                + [(f"{m} decode ms/token", infer["decode_ms"][m], ".1f") for m in METHODS]
                + [(f"{m} peak MB", infer["peak_mb"][m], ".0f") for m in METHODS])
    if meta:
        load = ", ".join(f"{x:.1f}" for x in meta.get("load_before", []))
        lines.append(f"Commit {meta.get('commit')}, {meta.get('date_utc')} UTC, {meta.get('elapsed_s', 0) / 60:.1f} min, "
                     f"{meta.get('plan', {}).get('threads')} threads, load average before {load}"
                     + (" (quick sizes)" if meta.get("quick") else "")
                     + ("; partial: the run had not finished" if not meta.get("complete", True) else "") + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0] if argv else "bench-results/summary.json")
    if not path.is_file():
        print(f"benchmarks.table: {path} not found; run `make bench` first", file=sys.stderr)
        return 1
    print(table(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
