"""`make bench`: training and inference of fa, swa and e2e side by side; writes bench-results/summary.json.

    python -m benchmarks.run                 # debug preset at the paper's geometry / 8 (k 1024, b 128), <= 15 min on 2 cores
    python -m benchmarks.run --quick         # toy sizes (k 64, b 16), for the test: every key, about half a minute
    python -m benchmarks.table               # the README's markdown table from summary.json

Every measurement runs in a fresh subprocess (``benchmarks.train_speed``, ``benchmarks.train_memory``,
``lightning_ttt.infer.bench``), so its peak memory is its own. The methods are interleaved: each
round runs fa, swa, e2e in turn at one length, and the reported times are medians over all
timed steps (training) or rounds (inference). Numbers only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from benchmarks import train_speed
from benchmarks.train_memory import measure_train_peak_mb
from lightning_ttt.config import ModelConfig
from lightning_ttt.model.flops import model_flops
from lightning_ttt.infer import bench as infer_bench

METHODS = ("fa", "swa", "e2e")


@dataclass
class BenchPlan:
    """The lengths, geometry and repeats of one run."""

    window: int
    mini_batch: int
    train_lengths: tuple[int, ...]
    prefill_lengths: tuple[int, ...]
    decode_lengths: tuple[int, ...]  # contexts (among prefill_lengths) after which decode_tokens are timed
    e2e_peak_lengths: tuple[int, ...]  # e2e inference peak memory at these contexts
    decode_tokens: int
    long: int  # from this length on: one timed step per training round, one inference round
    train_rounds: int = 3  # a shared machine swings single rounds by tens of percent
    train_steps: int = 5  # timed steps per round below ``long`` (1 from ``long`` on)
    infer_rounds: int = 2  # below ``long`` (1 from ``long`` on)
    preset: str = "debug"
    threads: int = 2
    timeout_s: float = 900
    name: str = "full"


FULL = BenchPlan(window=1024, mini_batch=128, train_lengths=(1024, 4096, 16384), prefill_lengths=(1024, 4096, 16384, 65536),
                 decode_lengths=(4096, 16384, 65536), e2e_peak_lengths=(16384, 1048576), decode_tokens=128, long=16384)
# one thread: on a busy machine two spinning threads per process slow the toy sizes down by 10x
QUICK = BenchPlan(window=64, mini_batch=16, train_lengths=(64,), prefill_lengths=(64,), decode_lengths=(64,),
                  e2e_peak_lengths=(64, 128), decode_tokens=16, long=128, train_rounds=1, train_steps=1, infer_rounds=1,
                  threads=1, timeout_s=120, name="quick")


def required_keys(plan: BenchPlan) -> list[str]:
    """The dotted keys ``summary.json`` must hold for ``plan`` (for FULL: the ones issue 14 lists)."""
    keys = [f"train.e2e_over_{base}.{t}" for base in ("fa", "swa") for t in plan.train_lengths]
    keys += [f"train.peak_mb.{m}.{t}" for m in METHODS for t in plan.train_lengths]
    keys += [f"infer.prefill_s_per_1k.{m}.{t}" for m in METHODS for t in plan.prefill_lengths]
    keys += [f"infer.decode_ms.{m}.{t}" for m in METHODS for t in plan.decode_lengths]
    return keys + [f"infer.peak_mb.e2e.{t}" for t in plan.e2e_peak_lengths]


def lookup(summary: dict, key: str):
    """``summary`` at a dotted key, or None."""
    node = summary
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


class Progress:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.start:6.0f} s] {msg}", flush=True)


def train(plan: BenchPlan, say: Progress, errors: list[str], saved=lambda part: None) -> dict:
    """Step-time ratios (interleaved rounds, medians) and peak memory per method and length."""
    out: dict = {"e2e_over_fa": {}, "e2e_over_swa": {}, "flops_e2e_over_fa": {}, "flops_e2e_over_swa": {},
                 "s_per_step": {m: {} for m in METHODS}, "peak_mb": {m: {} for m in METHODS}}
    for seq_len in plan.train_lengths:
        flops = {m: model_flops(ModelConfig.from_preset(plan.preset, m, window=plan.window, mini_batch=plan.mini_batch),
                                seq_len) for m in METHODS}
        for base in ("fa", "swa"):  # what the ratio would be if every method ran its matrix products equally fast
            out[f"flops_e2e_over_{base}"][str(seq_len)] = flops["e2e"] / flops[base]
        long = seq_len >= plan.long
        steps = 1 if long else plan.train_steps
        args = train_speed.parse_args(["--preset", plan.preset, "--window", str(plan.window), "--mini-batch",
                                       str(plan.mini_batch), "--threads", str(plan.threads), "--steps", str(steps),
                                       "--warmup", "1"])
        times: dict[str, list[float]] = {m: [] for m in METHODS}
        for r in range(plan.train_rounds):
            for method in METHODS:
                result = train_speed.run_fresh(method, seq_len, args)
                if "error" in result:
                    errors.append(f"train {method} T={seq_len}: {result['error']}")
                    continue
                times[method] += result["times"]
                say(f"train {method:<3} T={seq_len:<6} round {r + 1}/{plan.train_rounds}: "
                    f"{statistics.median(result['times']):.3f} s/step")
        medians = {m: statistics.median(t) for m, t in times.items() if t}
        for m, s in medians.items():
            out["s_per_step"][m][str(seq_len)] = s
        for base in ("fa", "swa"):
            if "e2e" in medians and base in medians:
                out[f"e2e_over_{base}"][str(seq_len)] = medians["e2e"] / medians[base]
        for method in METHODS:
            try:
                peak = measure_train_peak_mb(method, seq_len, preset=plan.preset, window=plan.window,
                                             mini_batch=plan.mini_batch, threads=plan.threads)
            except RuntimeError as err:
                errors.append(str(err))
                continue
            out["peak_mb"][method][str(seq_len)] = peak
            say(f"train {method:<3} T={seq_len:<6} peak {peak:.0f} MB")
        saved(out)
    return out


def infer(plan: BenchPlan, say: Progress, errors: list[str], saved=lambda part: None) -> dict:
    """Prefill s/1K, decode ms/token and peak memory of ``InferenceSession`` (``ttt bench``'s measurement)."""
    out: dict = {"prefill_s_per_1k": {m: {} for m in METHODS}, "decode_ms": {m: {} for m in METHODS},
                 "peak_mb": {m: {} for m in METHODS}, "fa_whole_forward_s_per_1k": {}}
    runs = [(c, m) for c in plan.prefill_lengths for m in METHODS]
    runs += [(c, "e2e") for c in plan.e2e_peak_lengths if c not in plan.prefill_lengths]
    for context in dict.fromkeys(c for c, _ in runs):
        methods = [m for c, m in runs if c == context]
        decode = plan.decode_tokens if context in plan.decode_lengths else 0
        settings = infer_bench.Settings(preset=plan.preset, window=plan.window, mini_batch=plan.mini_batch, decode=decode,
                                        threads=plan.threads, whole_forward=True)
        rows: dict[str, list[dict]] = {m: [] for m in methods}
        rounds = 1 if context >= plan.long else plan.infer_rounds
        for r in range(rounds):
            for method in methods:
                try:
                    row = infer_bench.run_fresh(method, context, settings, plan.timeout_s)
                except (RuntimeError, subprocess.TimeoutExpired) as err:
                    errors.append(f"infer {method} {context}: {err}")
                    continue
                rows[method].append(row)
                say(f"infer {method:<3} {context:>8}: prefill {row['prefill_s_per_1k']:.3f} s/1K"
                    + (f", decode {row['decode_ms_per_token']:.1f} ms/token" if decode else "")
                    + f", peak {row['peak_mem_mb']:.0f} MB"
                    + (f"; whole-sequence forward {row['whole_forward_s_per_1k']:.3f} s/1K" if "whole_forward_s_per_1k" in row
                       else ""))
        for method, got in rows.items():
            if not got:
                continue
            med = lambda key: statistics.median(r[key] for r in got)  # noqa: E731
            out["prefill_s_per_1k"][method][str(context)] = med("prefill_s_per_1k")
            out["peak_mb"][method][str(context)] = med("peak_mem_mb")
            if decode:
                out["decode_ms"][method][str(context)] = med("decode_ms_per_token")
            if all("whole_forward_s_per_1k" in r for r in got):
                out["fa_whole_forward_s_per_1k"][str(context)] = med("whole_forward_s_per_1k")
        saved(out)
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        return None


def write_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def run(plan: BenchPlan, out: Path) -> tuple[dict, list[str]]:
    """Measure everything, write ``out`` (atomically, also after each part: ``meta.complete`` false
    until the end); returns the summary and the missing keys."""
    say, errors = Progress(), []
    load_before = os.getloadavg()
    say(f"plan: {json.dumps(asdict(plan))}")
    summary: dict = {}

    def save(complete: bool = False) -> list[str]:
        missing = [k for k in required_keys(plan) if lookup(summary, k) is None]
        summary["meta"] = {
            "plan": asdict(plan), "quick": plan.name == "quick", "commit": git_commit(), "cpu_count": os.cpu_count(),
            "load_before": load_before, "load_after": os.getloadavg(), "elapsed_s": time.perf_counter() - say.start,
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "errors": errors, "missing": missing,
            "complete": complete, "weights": "random (speed and memory only)",
        }
        write_atomic(out, summary)
        return missing

    summary["train"] = train(plan, say, errors, saved=lambda part: (summary.__setitem__("train", part), save()))
    summary["infer"] = infer(plan, say, errors, saved=lambda part: (summary.__setitem__("infer", part), save()))
    missing = save(complete=True)
    say(f"wrote {out}" + (f"; missing {len(missing)} keys" if missing else ""))
    return summary, missing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="toy sizes: every key, about a minute")
    p.add_argument("--out", default="bench-results/summary.json", help="where the summary goes")
    p.add_argument("--threads", type=int, default=None, help="torch threads per measurement (default: 2; --quick: 1)")
    args = p.parse_args(argv)
    plan = replace(QUICK if args.quick else FULL)
    if args.threads is not None:
        plan.threads = args.threads
    _, missing = run(plan, Path(args.out))
    if missing:
        print(f"benchmarks.run: no value for {', '.join(missing)} (see meta.errors in {args.out})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
