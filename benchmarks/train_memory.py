"""Peak memory of one training step of fa, swa or e2e, measured in a fresh process (prints, never asserts).

    python -m benchmarks.train_memory                    # debug preset, k 1024, b 128, T = 1K, 4K, 16K

Minimal: the peak resident set of a fresh ``benchmarks.train_speed`` process (one warm-up step and
one timed step) above its resident set after building the model and batch.
"""

from __future__ import annotations

import argparse

from benchmarks.train_speed import parse_args, run_fresh

DEFAULT_LENGTHS = (1024, 4096, 16384)


def measure_train_peak_mb(method: str, seq_len: int, preset: str = "debug", window: int = 1024, mini_batch: int = 128,
                          batch: int = 1, threads: int = 2) -> float:
    """Peak RSS (MB) of a training step of ``method`` at ``seq_len`` in a fresh process."""
    args = parse_args(["--preset", preset, "--window", str(window), "--mini-batch", str(mini_batch), "--batch", str(batch),
                       "--threads", str(threads), "--steps", "1", "--warmup", "1"])
    result = run_fresh(method, seq_len, args)
    if "error" in result:
        raise RuntimeError(f"training step of {method} at T={seq_len} failed: {result['error']}")
    return result["peak_rss_mb"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=["fa", "swa", "e2e"])
    p.add_argument("--lengths", nargs="+", type=int, default=list(DEFAULT_LENGTHS))
    args = p.parse_args(argv)
    for seq_len in args.lengths:
        for method in args.methods:
            print(f"{method:<4} T={seq_len:<6} peak {measure_train_peak_mb(method, seq_len):8.0f} MB", flush=True)


if __name__ == "__main__":
    main()
