"""Training-step speed and peak memory of fa, swa and e2e.

One training step = forward + backward of the outer loss + an AdamW step, exactly as in
training: ``lm_loss(..., ttt=cfg.ttt_in_training, create_graph=True)`` then ``.backward()``.
Each (method, T) runs in a fresh subprocess so that its peak RSS is its own.

    python -m benchmarks.train_speed                      # debug preset, T = 1K, 4K, 16K, 2 threads
    python -m benchmarks.train_speed --lengths 1024 --methods fa e2e --json bench-results/speed.json
    python -m benchmarks.train_speed --device cuda --bf16 --preset 125m --window 8192 --mini-batch 1024

The default geometry is the paper's (window 8192, mini-batch 1024) scaled by 1/8.
This script prints numbers only; it never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from functools import partial

import torch

from lightning_ttt.config import METHODS, ModelConfig
from lightning_ttt.model.transformer import Transformer
from lightning_ttt.ttt.objective import lm_loss
from lightning_ttt.ttt.update import make_update

DEFAULT_LENGTHS = (1024, 4096, 16384)
LONG = 16384  # from this length on, the default step count is cut to keep the full table < ~5 min


def current_rss_mb() -> float:
    """Resident set size now (Linux /proc), else the peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def build(method: str, args: argparse.Namespace) -> tuple[ModelConfig, Transformer]:
    cfg = ModelConfig.from_preset(args.preset, method, window=args.window, mini_batch=args.mini_batch)
    torch.manual_seed(0)
    return cfg, Transformer(cfg).to(args.device)


def train_step(model: Transformer, cfg: ModelConfig, opt: torch.optim.Optimizer, batch: tuple, autocast) -> float:
    """One outer step; returns the loss. Synchronises CUDA so wall time covers the work."""
    ids, targets, mask = batch
    update = make_update(cfg)
    opt.zero_grad(set_to_none=True)
    with autocast():
        out = lm_loss(model, ids, targets, mask, ttt=cfg.ttt_in_training, update=update, create_graph=True)
    out.loss.backward()
    opt.step()
    if ids.is_cuda:
        torch.cuda.synchronize()
    return float(out.loss.detach())


def default_steps(seq_len: int, args: argparse.Namespace) -> tuple[int, int]:
    """(warm-up, timed) steps: the flags, or fewer for long sequences when left unset."""
    long = seq_len >= LONG
    warmup = args.warmup if args.warmup is not None else 2  # the first steps also pay for first-touch memory
    steps = args.steps if args.steps is not None else (3 if long else 8)
    return warmup, steps


def measure(method: str, seq_len: int, args: argparse.Namespace) -> dict:
    """Time one (method, T) in this process. Peak memory is only meaningful in a fresh process."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg, model = build(method, args)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, seq_len + 1), generator=gen).to(device)
    batch = (ids[:, :-1], ids[:, 1:], torch.ones(args.batch, seq_len, dtype=torch.bool, device=device))
    autocast = partial(torch.autocast, device.type, dtype=torch.bfloat16) if args.bf16 else nullcontext
    base_rss = current_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    warmup, steps = default_steps(seq_len, args)
    for _ in range(warmup):
        loss = train_step(model, cfg, opt, batch, autocast)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = train_step(model, cfg, opt, batch, autocast)
        times.append(time.perf_counter() - t0)
    result = {
        "method": method, "seq_len": seq_len, "batch": args.batch, "preset": args.preset, "window": cfg.window,
        "mini_batch": cfg.mini_batch, "device": args.device, "bf16": args.bf16, "threads": args.threads,
        "steps": steps, "warmup": warmup, "times": times, "s_min": min(times), "s_median": statistics.median(times),
        "loss": loss, "peak_rss_mb": peak_rss_mb() - base_rss,
    }
    result["tokens_per_s"] = args.batch * seq_len / result[f"s_{args.stat}"]
    if device.type == "cuda":
        result["peak_cuda_mb"] = (torch.cuda.max_memory_allocated(device) - base_cuda) / 2**20
    return result


def run_fresh(method: str, seq_len: int, args: argparse.Namespace) -> dict:
    """``measure`` in a new interpreter (so peak RSS belongs to this configuration alone)."""
    cmd = [sys.executable, "-m", "benchmarks.train_speed", "--single", "--methods", method, "--lengths", str(seq_len),
           *forwarded_flags(args)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"method": method, "seq_len": seq_len, "error": tail}
    return json.loads(lines[-1])


def forwarded_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--batch", str(args.batch), "--threads", str(args.threads), "--device", args.device,
             "--preset", args.preset, "--window", str(args.window), "--mini-batch", str(args.mini_batch),
             "--stat", args.stat]
    flags += ["--steps", str(args.steps)] if args.steps is not None else []
    flags += ["--warmup", str(args.warmup)] if args.warmup is not None else []
    return flags + (["--bf16"] if args.bf16 else [])


def ratios(results: list[dict], stat: str) -> dict[int, dict[str, float]]:
    """e2e time over fa and swa time, per T."""
    by = {(r["method"], r["seq_len"]): r for r in results if "error" not in r}
    out: dict[int, dict[str, float]] = {}
    for (method, seq_len), r in by.items():
        if method != "e2e":
            continue
        for base in ("fa", "swa"):
            if (base, seq_len) in by:
                out.setdefault(seq_len, {})[f"e2e/{base}"] = r[f"s_{stat}"] / by[base, seq_len][f"s_{stat}"]
    return out


def print_table(results: list[dict], stat: str) -> None:
    cuda = any("peak_cuda_mb" in r for r in results)
    head = f"{'method':<7}{'T':>7}{'s/step':>10}{'tokens/s':>11}{'peak RSS MB':>13}" + (f"{'peak CUDA MB':>14}" if cuda else "")
    print(head)
    print("-" * len(head))
    for r in results:
        if "error" in r:
            print(f"{r['method']:<7}{r['seq_len']:>7}  failed: {r['error']}")
            continue
        line = f"{r['method']:<7}{r['seq_len']:>7}{r[f's_{stat}']:>10.3f}{r['tokens_per_s']:>11.0f}{r['peak_rss_mb']:>13.0f}"
        print(line + (f"{r.get('peak_cuda_mb', float('nan')):>14.0f}" if cuda else ""))
    for seq_len, rs in sorted(ratios(results, stat).items()):
        print(f"T={seq_len:<6} " + "  ".join(f"{k} = {v:.2f}x" for k, v in rs.items()))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--lengths", nargs="+", type=int, default=list(DEFAULT_LENGTHS))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 8; 3 from T=16K)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--preset", default="debug")
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--mini-batch", type=int, default=128)
    p.add_argument("--stat", choices=("min", "median"), default="min", help="statistic over the timed steps")
    p.add_argument("--json", metavar="OUT", help="also write every result to this JSON file")
    p.add_argument("--single", action="store_true", help="measure in this process; print one JSON line")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if args.single:
        results = [measure(m, t, args) for m in args.methods for t in args.lengths]
        for r in results:
            print(json.dumps(r))
        return results
    print(f"preset={args.preset} window={args.window} mini_batch={args.mini_batch} batch={args.batch} "
          f"device={args.device} bf16={args.bf16} threads={args.threads} stat={args.stat}", flush=True)
    results = []
    for seq_len in args.lengths:
        for method in args.methods:
            results.append(run_fresh(method, seq_len, args))
            r = results[-1]
            print(f"  {method} T={seq_len}: " + (r["error"] if "error" in r else f"{r[f's_{args.stat}']:.3f} s/step"),
                  flush=True)
    print()
    print_table(results, args.stat)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"results": results, "ratios": ratios(results, args.stat)}, f, indent=2)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
