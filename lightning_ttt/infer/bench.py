"""Inference speed and memory against context length for fa, swa and e2e (prints and plots; never asserts).

Each (method, context) runs in a fresh subprocess so that its peak memory is its own (peak RSS
above the RSS after building the model on CPU; ``torch.cuda.max_memory_allocated`` on CUDA).
Prefill feeds random ids in pieces of ``--piece`` tokens (the prompt is never held whole), then
``--decode`` tokens are decoded greedily one at a time (for e2e this includes the TTT steps).
The default geometry is the paper's scaled by 1/8: window k = 1024, mini-batch b = 128.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from lightning_ttt.config import SAME_WEIGHTS_METHODS, ModelConfig
from lightning_ttt.infer.loading import check_model_dir, load_model_dir
from lightning_ttt.infer.session import InferenceSession
from lightning_ttt.model.transformer import Transformer

DEFAULT_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
PRESET_GEOMETRY = {"window": 1024, "mini_batch": 128}  # the paper's k = 8192, b = 1024 scaled by 1/8


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@dataclass
class Settings:
    """What every measurement shares (passed to the measuring subprocess as JSON)."""

    preset: str = "debug"
    window: int | None = None  # None: 1/8 of the paper's for a preset, the model's own for a directory
    mini_batch: int | None = None
    decode: int = 128
    piece: int = 4096
    threads: int = 1
    device: str = "cpu"
    model_dir: str | None = None  # an exported model instead of the preset's random weights
    whole_forward: bool = False  # fa: also time one whole-sequence forward of the context (no cache, no chunks)

    def config(self, method: str) -> ModelConfig:
        """The model settings measured for ``method`` (one-line errors for bad ones)."""
        geometry = {k: v for k, v in (("window", self.window), ("mini_batch", self.mini_batch)) if v is not None}
        if self.model_dir is None:
            return ModelConfig.from_preset(self.preset, method, **{**PRESET_GEOMETRY, **geometry})
        return ModelConfig.from_exported(self.model_dir).replace(method=method, **geometry)  # run settings only

    def model(self, method: str) -> Transformer:
        """The model to time, in eval mode on the CPU: the preset's random weights or the directory's."""
        cfg = self.config(method)
        if self.model_dir is None:
            return Transformer(cfg).eval()
        model = load_model_dir(self.model_dir).model
        model.cfg = cfg
        return model


def measure(method: str, context: int, args: Settings) -> dict:
    """Prefill ``context`` tokens and decode ``args.decode`` more in this process; returns one row."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = args.model(method).to(device)
    cfg = model.cfg
    session = InferenceSession(model, 1, capacity=context + args.decode)
    gen = torch.Generator().manual_seed(0)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() / 2**20 if cuda else _rss_mb()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    started, done = time.perf_counter(), 0
    while done < context:
        n = min(args.piece, context - done)
        logits = session.feed(torch.randint(0, cfg.vocab_size, (1, n), generator=gen).to(device))
        done += n
    sync()
    prefill = time.perf_counter() - started
    token = logits[:, -1].argmax(-1, keepdim=True)  # [1, 1]
    started = time.perf_counter()
    for _ in range(args.decode):
        token = session.feed(token)[:, -1].argmax(-1, keepdim=True)
    sync()
    decode = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mb()
    row = {"method": method, "context": context, "prefill_s": prefill, "prefill_s_per_1k": prefill / context * 1024,
           "decode_ms_per_token": decode / max(args.decode, 1) * 1e3, "peak_mem_mb": peak - base,
           "device": str(device), "threads": args.threads, "window": cfg.window, "mini_batch": cfg.mini_batch}
    if args.whole_forward and method == "fa":  # after the peak: what chunked prefill must not be slower than
        del session
        ids = torch.randint(0, cfg.vocab_size, (1, context), generator=gen).to(device)
        started = time.perf_counter()
        with torch.no_grad():
            model.logits(model(ids)[:, -1:])
        sync()
        row["whole_forward_s_per_1k"] = (time.perf_counter() - started) / context * 1024
    return row


def run_fresh(method: str, context: int, args: Settings, timeout: float) -> dict:
    """``measure`` in a fresh Python process, so that its peak memory is its own."""
    cmd = [sys.executable, "-m", "lightning_ttt.infer.bench", method, str(context), json.dumps(asdict(args))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{method} at {context}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def resolve_methods(settings: Settings, methods: Sequence[str] | None) -> list[str]:
    """The methods to measure; a model directory runs as its own method (or fa <-> swa: same weights)."""
    if settings.model_dir is None:
        return list(methods or ("fa", "swa", "e2e"))
    own = ModelConfig.from_exported(settings.model_dir).method
    for method in methods or [own]:
        if method != own and {method, own} - SAME_WEIGHTS_METHODS:
            raise ValueError(f"--methods {method}: {settings.model_dir} is method {own}; only fa and swa weights are "
                             "interchangeable")
    return list(methods or [own])


def weights(settings: Settings) -> str:
    """Whose weights are timed: a preset's are random (speed and memory only; the outputs mean nothing)."""
    if settings.model_dir is None:
        return f"random (preset {settings.preset}; speed and memory only)"
    return settings.model_dir


def print_table(rows: list[dict]) -> None:
    print(f"{'method':<7}{'context':>9}{'prefill s/1K':>14}{'decode ms/tok':>15}{'peak MB':>10}")
    for r in rows:
        print(f"{r['method']:<7}{r['context']:>9}{r['prefill_s_per_1k']:>14.4f}{r['decode_ms_per_token']:>15.2f}"
              f"{r['peak_mem_mb']:>10.1f}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for key, ax, label in (("prefill_s_per_1k", axes[0], "prefill seconds per 1K tokens"),
                           ("decode_ms_per_token", axes[1], "decode ms per token"),
                           ("peak_mem_mb", axes[2], "peak memory (MB)")):
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = [(r["context"], r[key]) for r in rows if r["method"] == method]
            ax.plot(*zip(*pts), marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_tensorboard(rows: list[dict], logdir: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(logdir)) as writer:
        for r in rows:
            for key in ("prefill_s_per_1k", "decode_ms_per_token", "peak_mem_mb"):
                writer.add_scalar(f"infer/{r['method']}/{key}", r[key], global_step=r["context"])


def check_bench_args(lengths: Sequence[int], out: str, overwrite: bool, model_dir: str | None) -> None:
    """One-line errors, before any measurement: lengths, results already written, a damaged model directory."""
    if not lengths or min(lengths) < 1:
        raise ValueError(f"--lengths {' '.join(map(str, lengths))}: expected one or more context lengths >= 1")
    written = [p for p in (Path(f"{out}.json"), Path(f"{out}.png")) if p.exists()]
    if written and not overwrite:
        raise FileExistsError(f"--out {out}: {written[0]} exists; pass --overwrite to replace it")
    if model_dir is not None:
        check_model_dir(model_dir)


def bench(*, methods: Sequence[Literal["fa", "swa", "e2e"]] | None = None, lengths: Sequence[int] = DEFAULT_LENGTHS,
          preset: str = "debug", model_dir: str | None = None, window: int | None = None,
          mini_batch: int | None = None, decode: int = 128, piece: int = 4096, threads: int = 1, device: str = "cpu",
          timeout: float = 3600, out: str = "bench-results/infer_speed", tensorboard: str | None = None,
          progress: bool = True, overwrite: bool = False) -> int:
    """Inference speed and memory against context length for fa, swa and e2e (prints and plots; never asserts).

    Each (method, context) runs in a fresh process; the default geometry is the paper's at 1/8.

    Args:
        methods: methods to measure (default: fa swa e2e for a preset, the model's own for --model-dir).
        lengths: context lengths in tokens.
        preset: model preset (random weights).
        model_dir: an exported model directory (`ttt export`, `ttt import-jax`) instead of a preset.
        window: sliding window k (default: 1024 for a preset, the model's own for --model-dir).
        mini_batch: TTT mini-batch b (default: 128 for a preset, the model's own for --model-dir).
        decode: tokens decoded after the prefill.
        piece: prompt tokens fed per call.
        threads: CPU threads.
        device: torch device.
        timeout: seconds per (method, context).
        out: writes OUT.json and OUT.png.
        tensorboard: also write TensorBoard scalars to this directory.
        progress: show a progress bar over the measurements (--no-progress: do not).
        overwrite: replace an existing OUT.json / OUT.png.
    """
    check_bench_args(lengths, out, overwrite, model_dir)
    settings = Settings(preset, window, mini_batch, decode, piece, threads, device, model_dir)
    methods = resolve_methods(settings, methods)
    for method in methods:
        settings.config(method)  # bad settings: one line, now
    from tqdm.auto import tqdm

    rows = []
    runs = [(method, context) for context in sorted(lengths) for method in methods]
    for method, context in tqdm(runs, desc="bench", unit="run", disable=not progress, file=sys.stderr):
        try:
            rows.append({**run_fresh(method, context, settings, timeout), "weights": weights(settings)})
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            print(f"skipped: {err}", file=sys.stderr)
    print(f"weights: {weights(settings)}")
    print_table(rows)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, path.with_suffix(".png"))
    if tensorboard:
        write_tensorboard(rows, Path(tensorboard))
    print(f"wrote {path.with_suffix('.json')} and {path.with_suffix('.png')}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # one measurement: METHOD CONTEXT SETTINGS-JSON (run by `run_fresh`)
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]), Settings(**json.loads(sys.argv[3])))))
