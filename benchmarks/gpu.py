"""One-GPU benchmark of fa, swa and e2e at the 125m preset: training step, prefill, decode; prints JSON.

Runs with torch (and optionally lightning) only: no data stack, no tokenizer, no network, random
weights and random token ids. From the repository root:

    PYTHONPATH=. python benchmarks/gpu.py                 # CUDA: 125m, k 8192, b 1024, T 8192 (+ 32K if time allows)
    PYTHONPATH=. python benchmarks/gpu.py --tiny          # CPU: the debug model at toy sizes, seconds
    PYTHONPATH=. python benchmarks/gpu.py --out gpu.json  # also write the JSON to a file

Training is bf16 autocast over fp32 weights (one outer step = forward, backward, AdamW), timed
with the methods interleaved (medians). MFU = training FLOPs per token
(``lightning_ttt.model.flops.train_flops_per_token``) x tokens/s / the GPU's dense bf16 peak.
Inference runs bf16 weights through ``InferenceSession`` (prefill in pieces, then greedy decoding).
Every measurement checks the time budget first and is reported as skipped when it would not fit.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import partial

import torch

from benchmarks.train_speed import train_step
from lightning_ttt.config import ModelConfig
from lightning_ttt.infer.session import InferenceSession
from lightning_ttt.model.attention import flash_attn_available
from lightning_ttt.model.flops import parameter_counts, train_flops_per_token
from lightning_ttt.model.transformer import Transformer
from lightning_ttt.ttt.objective import lm_loss
from lightning_ttt.ttt.update import make_update

METHODS = ("fa", "swa", "e2e")
# dense bf16 tensor-core peaks (no sparsity), FLOP/s; the first name found in the device name wins
PEAK_BF16 = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989.4e12, "H200": 989.4e12, "GH200": 989.4e12,
             "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


@dataclass
class Plan:
    """What is measured: the model geometry, lengths and repeats."""

    preset: str
    window: int
    mini_batch: int
    train_lengths: tuple[int, ...]  # the first is required, later ones run only if time allows
    prefill_lengths: tuple[int, ...]
    decode_tokens: int
    piece: int
    steps: int
    warmup: int
    budget_s: float
    train_bf16: bool = True  # bf16 autocast for training (CPU bf16 matmuls are slow: --tiny trains in fp32)
    gap_len: int = 8192  # sequence length of the bf16-vs-fp32 loss comparison


FULL = Plan("125m", 8192, 1024, (8192, 32768), (8192, 32768, 131072), 64, 8192, steps=5, warmup=2, budget_s=450)
TINY = Plan("debug", 64, 16, (128,), (128, 256), 4, 64, steps=2, warmup=1, budget_s=60, train_bf16=False,
            gap_len=64)


def peak_flops(device: torch.device, override_tflops: float | None) -> tuple[str, float | None]:
    """(device name, dense bf16 peak FLOP/s or None when unknown)."""
    if override_tflops:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        return name, override_tflops * 1e12
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, next((peak for key, peak in PEAK_BF16.items() if key in name), None)


def random_batch(cfg: ModelConfig, seq_len: int, device: torch.device, seed: int = 0) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (1, seq_len + 1), generator=gen).to(device)
    return ids[:, :-1], ids[:, 1:], torch.ones(1, seq_len, dtype=torch.bool, device=device)


class Clock:
    """Wall time against the budget; ``fits(estimate)`` says whether a measurement may still start."""

    def __init__(self, budget_s: float) -> None:
        self.start, self.budget = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def fits(self, estimate_s: float) -> bool:
        return self.elapsed() + estimate_s <= self.budget


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(plan: Plan, method: str, device: torch.device, dtype: torch.dtype = torch.float32) -> Transformer:
    cfg = ModelConfig.from_preset(plan.preset, method, window=plan.window, mini_batch=plan.mini_batch)
    torch.manual_seed(0)
    return Transformer(cfg).to(device=device, dtype=dtype)


def train_speed(plan: Plan, seq_len: int, device: torch.device, peak: float | None, clock: Clock,
                required: bool = True) -> dict:
    """Training steps (bf16 autocast) of the three methods, interleaved; medians per method. An optional
    (not ``required``) length stops after its first round when the remaining rounds would overrun the budget."""
    autocast = partial(torch.autocast, device.type, dtype=torch.bfloat16) if plan.train_bf16 else nullcontext
    models = {m: build(plan, m, device) for m in METHODS}
    opts = {m: torch.optim.AdamW(model.parameters(), lr=1e-4) for m, model in models.items()}
    batch = random_batch(models["fa"].cfg, seq_len, device)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    first: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for r in range(plan.warmup + plan.steps):
        for m in METHODS:
            t0 = time.perf_counter()
            train_step(models[m], models[m].cfg, opts[m], batch, autocast)
            synchronize(device)
            dt = time.perf_counter() - t0
            first.setdefault(m, dt)
            if r >= plan.warmup:
                times[m].append(dt)
        if r == 0 and not required and not clock.fits(sum(first.values()) * (plan.warmup + plan.steps - 1)):
            return {"skipped": f"time budget: one round took {sum(first.values()):.1f} s"}
    out: dict = {}
    for m, model in models.items():
        s = statistics.median(times[m])
        tokens_per_s = seq_len / s
        flops = train_flops_per_token(model.cfg, seq_len)
        out[m] = {"step_s": s, "tokens_per_s": tokens_per_s, "flops_per_token": flops,
                  "mfu": flops * tokens_per_s / peak if peak else None, "sequence_kernel": model.sequence_kernel()}
    out["e2e_over_fa"] = out["e2e"]["step_s"] / out["fa"]["step_s"]
    out["e2e_over_swa"] = out["e2e"]["step_s"] / out["swa"]["step_s"]
    if device.type == "cuda":
        out["peak_cuda_mb_all_three"] = torch.cuda.max_memory_allocated(device) / 2**20
    del models, opts
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def loss_dtype_gap(plan: Plan, seq_len: int, device: torch.device) -> dict:
    """|loss(bf16 autocast) - loss(fp32)| of the training objective's forward, per method (same weights, same batch)."""
    gaps = {}
    for m in METHODS:
        model = build(plan, m, device)
        cfg = model.cfg
        batch = random_batch(cfg, seq_len, device, seed=1)
        losses = []
        for ctx in (nullcontext, partial(torch.autocast, device.type, dtype=torch.bfloat16)):
            with ctx():
                out = lm_loss(model, *batch, ttt=cfg.ttt_in_training, update=make_update(cfg), create_graph=False)
            losses.append(float(out.loss.detach()))
        gaps[m] = {"fp32": losses[0], "bf16": losses[1], "abs_diff": abs(losses[1] - losses[0])}
    return gaps


def infer_speed(plan: Plan, method: str, context: int, device: torch.device) -> dict:
    """Prefill ``context`` random tokens in pieces, then decode greedily; bf16 weights."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build(plan, method, device, dtype).eval()
    session = InferenceSession(model, 1, capacity=context + plan.decode_tokens)
    gen = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    t0, done = time.perf_counter(), 0
    while done < context:
        n = min(plan.piece, context - done)
        logits = session.feed(torch.randint(0, model.cfg.vocab_size, (1, n), generator=gen).to(device))
        done += n
    synchronize(device)
    prefill = time.perf_counter() - t0
    token = logits[:, -1].argmax(-1, keepdim=True)  # [1, 1]
    t0 = time.perf_counter()
    for _ in range(plan.decode_tokens):
        token = session.feed(token)[:, -1].argmax(-1, keepdim=True)
    synchronize(device)
    decode = time.perf_counter() - t0
    out = {"prefill_s": prefill, "prefill_s_per_1k": prefill / context * 1024,
           "decode_ms_per_token": decode / plan.decode_tokens * 1e3, "chunk_kernel": session.kernel}
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def run(plan: Plan, device: torch.device, peak_override: float | None = None, progress=print) -> dict:
    clock = Clock(plan.budget_s)
    name, peak = peak_flops(device, peak_override)
    fa = ModelConfig.from_preset(plan.preset, "fa", window=plan.window, mini_batch=plan.mini_batch)
    report: dict = {
        "device": name, "torch": torch.__version__, "cuda": torch.version.cuda, "peak_bf16_flops": peak,
        "peak_table_bf16_dense_tflops": {k: v / 1e12 for k, v in PEAK_BF16.items()},
        "flash_attn_available": flash_attn_available(), "flops_formula": "lightning_ttt.model.flops.train_flops_per_token",
        "plan": asdict(plan), "params": parameter_counts(fa)["total"], "train": {}, "prefill": {}, "decode": {},
    }
    for i, seq_len in enumerate(plan.train_lengths):
        if i and not clock.fits(0):
            report["train"][str(seq_len)] = {"skipped": "time budget"}
            continue
        progress(f"train T={seq_len} ({clock.elapsed():.0f} s)")
        try:
            report["train"][str(seq_len)] = train_speed(plan, seq_len, device, peak, clock, required=i == 0)
        except torch.OutOfMemoryError as err:
            report["train"][str(seq_len)] = {"skipped": f"out of memory: {str(err).splitlines()[0]}"}
            torch.cuda.empty_cache()
    report["flash_attn_used"] = any(r.get(m, {}).get("sequence_kernel") == "flash_attn"
                                    for r in report["train"].values() for m in METHODS)
    progress(f"bf16 vs fp32 loss ({clock.elapsed():.0f} s)")
    report["loss_bf16_vs_fp32"] = loss_dtype_gap(plan, plan.gap_len, device)
    last: dict[str, float] = {}  # seconds the previous length took, per method: the next is skipped if 4x won't fit
    for context in plan.prefill_lengths:
        for method in ("e2e", "fa"):
            key = f"{method}.{context}"
            if method in last and not clock.fits(4.5 * last[method]):
                report["prefill"][key] = {"skipped": "time budget"}
                continue
            progress(f"inference {method} {context} ({clock.elapsed():.0f} s)")
            t0 = time.perf_counter()
            try:
                r = infer_speed(plan, method, context, device)
            except torch.OutOfMemoryError as err:
                r = {"skipped": f"out of memory: {str(err).splitlines()[0]}"}
            last[method] = time.perf_counter() - t0
            report["prefill"][key] = r
            if "decode_ms_per_token" in r:
                report["decode"][key] = r["decode_ms_per_token"]
    report["elapsed_s"] = clock.elapsed()
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="the debug model at toy sizes on the CPU (seconds)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, cpu with --tiny)")
    p.add_argument("--budget-s", type=float, default=None, help="seconds before optional measurements are skipped")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU when the GPU is not in the table")
    p.add_argument("--out", default=None, help="also write the JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    plan = TINY if args.tiny else FULL
    if args.budget_s is not None:
        plan.budget_s = args.budget_s
    device = torch.device(args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda"))
    if device.type != "cuda" and not args.tiny:
        raise SystemExit("benchmarks/gpu.py: no CUDA device found; use --tiny for the CPU toy run")
    report = run(plan, device, args.peak_tflops, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    text = json.dumps(report, indent=2, default=lambda x: None if isinstance(x, float) and not math.isfinite(x) else x)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return report


if __name__ == "__main__":
    main()
