"""Peak memory of one training step against T for fa, swa and e2e (prints a table; never asserts).

One step = forward + backward of the outer loss, exactly as in training
(``lm_loss(..., ttt=cfg.ttt_in_training, create_graph=True)`` then ``.backward()``); e2e also with
``checkpoint_chunks`` and/or ``checkpoint_blocks``. Each measurement runs in a fresh Python process:
its peak resident set size above the resident size after building the model and the batch (CPU), or
``torch.cuda.max_memory_allocated`` above the allocated memory then (CUDA).

    python -m benchmarks.train_memory                           # debug preset, k 1024, b 128, T 1K 4K 16K
    python -m benchmarks.train_memory --lengths 16384 --methods fa swa --json bench-results/memory.json
    python -m benchmarks.train_memory --lengths 16384 --methods swa fa --set d_model=256 --set n_layers=8 --set mlp_hidden=768

From Python: ``measure_train_peak_mb("swa", 16384)``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

DEFAULT_LENGTHS = (1024, 4096, 16384)
# (label, method, checkpoint_chunks, checkpoint_blocks)
VARIANTS = (("fa", "fa", False, False), ("swa", "swa", False, False), ("e2e", "e2e", False, False),
            ("e2e +ckpt_chunks", "e2e", True, False), ("e2e +ckpt_blocks", "e2e", False, True),
            ("e2e +both", "e2e", True, True))


# glibc: blocks above 128 KiB always mmap'd (and returned when freed), so peak RSS follows the live tensors
# rather than the allocator's history (its adaptive threshold otherwise makes the peak vary from run to run)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def _one_step_peak_mb(method: str, seq_len: int, preset: str, window: int, mini_batch: int, batch: int,
                      checkpoint_chunks: bool, checkpoint_blocks: bool, device: str, threads: int,
                      overrides: dict | None = None) -> dict:
    """Run one training step in *this* process; returns its peak memory (meaningful in a fresh process only)."""
    import resource

    import torch

    from lightning_ttt.config import ModelConfig
    from lightning_ttt.model.checkpointing import checkpoint_blocks as wrap_blocks
    from lightning_ttt.model.transformer import Transformer
    from lightning_ttt.ttt.objective import lm_loss
    from lightning_ttt.ttt.update import make_update

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(preset, method, window=window, mini_batch=mini_batch, **(overrides or {}))
    model = Transformer(cfg).to(device)
    if checkpoint_blocks:
        wrap_blocks(model)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones(batch, seq_len, dtype=torch.bool, device=device)
    cuda = device.startswith("cuda")
    base = torch.cuda.memory_allocated() / 2**20 if cuda else rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out = lm_loss(model, ids[:, :-1], ids[:, 1:], mask, ttt=cfg.ttt_in_training, update=make_update(cfg),
                  create_graph=True, checkpoint_chunks=checkpoint_chunks)
    out.loss.backward()
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "seq_len": seq_len, "preset": preset, "window": window, "mini_batch": mini_batch,
            "batch": batch, "checkpoint_chunks": checkpoint_chunks, "checkpoint_blocks": checkpoint_blocks,
            "device": device, "overrides": overrides or {}, "peak_mb": peak - base, "loss": float(out.loss)}


def measure_train_peak_mb(method: str, seq_len: int, *, preset: str = "debug", window: int = 1024,
                          mini_batch: int = 128, batch: int = 1, checkpoint_chunks: bool = False,
                          checkpoint_blocks: bool = False, device: str = "cpu", threads: int = 1,
                          timeout: float = 1200) -> float:
    """Peak memory (MB) of one training step of ``method`` at length ``seq_len``, in a fresh process."""
    return measure_row(method, seq_len, preset=preset, window=window, mini_batch=mini_batch, batch=batch,
                       checkpoint_chunks=checkpoint_chunks, checkpoint_blocks=checkpoint_blocks, device=device,
                       threads=threads, timeout=timeout)["peak_mb"]


def measure_row(method: str, seq_len: int, *, timeout: float = 1200, **settings) -> dict:
    """``_one_step_peak_mb`` in a fresh Python process; returns its row (raises with its last stderr line)."""
    spec = json.dumps({"method": method, "seq_len": seq_len, **settings})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
           **MALLOC_ENV}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.train_memory", "--single", spec], capture_output=True,
                          text=True, cwd=root, env=env, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{method} at T={seq_len}: {tail}")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_LENGTHS))
    parser.add_argument("--methods", nargs="+", default=[label for label, *_ in VARIANTS],
                        help="labels among: " + ", ".join(repr(label) for label, *_ in VARIANTS))
    parser.add_argument("--preset", default="debug")
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--mini-batch", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a model setting of the preset, e.g. --set d_model=256 --set n_layers=8")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--single", help=argparse.SUPPRESS)  # internal: one measurement, JSON spec
    args = parser.parse_args(argv)
    if args.single:
        print(json.dumps(_one_step_peak_mb(**{k: v for k, v in json.loads(args.single).items() if k != "timeout"})))
        return 0
    overrides = {}
    for item in args.set:
        field, sep, value = item.partition("=")
        if not sep or not field:
            parser.error(f"--set {item!r}: expected FIELD=VALUE, e.g. d_model=256")
        try:
            overrides[field] = json.loads(value)  # numbers and booleans; anything else stays a string
        except json.JSONDecodeError:
            overrides[field] = value
    variants = {label: rest for label, *rest in VARIANTS}
    unknown = [m for m in args.methods if m not in variants]
    if unknown:
        parser.error(f"--methods {unknown[0]!r}: expected one of {', '.join(variants)}")
    rows = []
    print(f"peak MB of one training step, {args.preset} preset" + "".join(f", {k} {v}" for k, v in overrides.items())
          + f", window {args.window}, mini-batch {args.mini_batch}, batch {args.batch}, {args.device}")
    print(f"{'method':<18}" + "".join(f"{'T=' + str(t):>10}" for t in args.lengths))
    for label in args.methods:
        method, chunks, blocks = variants[label]
        cells = []
        for seq_len in args.lengths:
            try:
                row = measure_row(method, seq_len, preset=args.preset, window=args.window, mini_batch=args.mini_batch,
                                  batch=args.batch, checkpoint_chunks=chunks, checkpoint_blocks=blocks,
                                  device=args.device, threads=args.threads, overrides=overrides)
                rows.append({"label": label, **row})
                cells.append(f"{row['peak_mb']:>10.0f}")
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                print(f"skipped: {err}", file=sys.stderr)
                cells.append(f"{'-':>10}")
        print(f"{label:<18}" + "".join(cells), flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rows, f, indent=2)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
