"""Peak memory and time of one e2e meta-training step per checkpointing-through-time schedule.

One step = the meta forward (prefix once, suffix through the inner loop with ``create_graph``) and
the backward pass of the outer loss, as in training. Every (schedule, T) runs in a fresh subprocess,
so that its peak resident memory is its own; the table shows the peak minus the memory before the step
(weights, inputs and the interpreter excluded), the states the schedule keeps (``peak_states``), the
chunk steps per chunk (``chunk_passes``) and the time of a second step.

    python -m benchmarks.inner_memory                          # debug preset, n = T/b = 8, 32, 128
    python -m benchmarks.inner_memory --chunks 8 32 --schedules none log --json bench-results/inner.json

``checkpoint_blocks`` is on (the prefix keeps only block inputs), so the differences are the inner
loop's. This script prints numbers only; it never asserts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from lightning_ttt.config import CHECKPOINT_SCHEDULES, ModelConfig
from lightning_ttt.model.checkpointing import checkpoint_blocks
from lightning_ttt.model.transformer import Transformer
from lightning_ttt.ttt.objective import lm_loss
from lightning_ttt.ttt.schedule import chunk_passes, peak_states
from lightning_ttt.ttt.update import make_update
from benchmarks.train_speed import current_rss_mb, peak_rss_mb


def reset_peak_rss_mb() -> float:
    """Reset the kernel's peak-RSS mark of this process (Linux ``clear_refs``); returns the RSS now."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # elsewhere the peak keeps the warm-up step's: the numbers then include it
    return current_rss_mb()


def hiwater_mb() -> float:
    """Peak RSS since the last reset (``VmHWM``), else the process's peak."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return peak_rss_mb()


def one_run(preset: str, schedule: str, n_chunks: int, batch: int, threads: int) -> dict:
    """Measure one (schedule, n) in this process: peak RSS of the first step, time of the second."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(preset, "e2e", checkpoint_chunks=schedule)
    model = checkpoint_blocks(Transformer(cfg))
    seq_len = n_chunks * cfg.mini_batch
    ids = torch.randint(0, cfg.bos_id, (batch, seq_len + 1))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    mask = torch.ones_like(targets, dtype=torch.bool)

    def step(length: int) -> float:
        start = time.perf_counter()
        out = lm_loss(model, inputs[:, :length], targets[:, :length], mask[:, :length], ttt=True,
                      update=make_update(cfg), create_graph=True, checkpoint_chunks=schedule)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step(cfg.mini_batch)  # one chunk: the first step's one-off allocations (threads, kernels) are not the schedule's
    before = reset_peak_rss_mb()
    step(seq_len)
    peak = hiwater_mb() - before
    seconds = step(seq_len)
    state_mb = sum(w.numel() for w in model.fast_weights().values()) * batch * 4 / 2**20
    state_mb += 2 * cfg.suffix_len * batch * cfg.kv_heads * cfg.window * cfg.head_dim * 4 / 2**20
    return {"schedule": schedule, "chunks": n_chunks, "seq_len": seq_len, "batch": batch, "peak_mb": peak,
            "step_s": seconds, "states_kept": peak_states(n_chunks, schedule),
            "chunk_passes": chunk_passes(n_chunks, schedule), "state_mb": state_mb}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="debug")
    parser.add_argument("--chunks", type=int, nargs="+", default=[8, 32, 128], help="n = T/b values")
    parser.add_argument("--schedules", nargs="+", default=list(CHECKPOINT_SCHEDULES), choices=CHECKPOINT_SCHEDULES)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--one", nargs=2, metavar=("SCHEDULE", "CHUNKS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one_run(args.preset, args.one[0], int(args.one[1]), args.batch, args.threads)))
        return 0
    rows = []
    print(f"{'T/b':>5} {'T':>6} {'schedule':>8} {'peak MB':>8} {'states':>6} {'state MB':>8} {'passes':>6} {'step s':>7}")
    for n in args.chunks:
        for schedule in args.schedules:
            cmd = [sys.executable, "-m", "benchmarks.inner_memory", "--one", schedule, str(n), "--preset", args.preset,
                   "--batch", str(args.batch), "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode:
                print(f"{n:>5} {schedule:>8} failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{n:>5} {row['seq_len']:>6} {schedule:>8} {row['peak_mb']:>8.1f} {row['states_kept']:>6} "
                  f"{row['states_kept'] * row['state_mb']:>8.1f} {row['chunk_passes']:>6.2f} {row['step_s']:>7.2f}",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
