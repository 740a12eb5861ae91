"""A tiny sweep file and the `ttt sweep` command line, for the sweep and evaluation tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TINY_MODEL = {"window": 32, "mini_batch": 16, "n_layers": 2, "d_model": 32, "n_heads": 2, "mlp_hidden": 64}


def tiny_sweep_spec(lengths: list[int] = [64]) -> dict:  # noqa: B006 - never mutated
    """fa, swa (sharing fa's runs at 32 tokens, its window) and e2e: pretrain at 32 tokens, fine-tune at 32
    and at ``lengths``."""
    return {"sweep": {
        "name": "tiny",
        "methods": ["fa", "swa", "e2e"],
        "base": {
            "seed_everything": 0,
            "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true", "limit_val_batches": 0,
                        "num_sanity_val_steps": 0, "log_every_n_steps": 1, "enable_model_summary": False,
                        "enable_progress_bar": False},
            "model": {"preset": "debug", "config": dict(TINY_MODEL)},
            "data": {"sources": ["stdlib"], "batch_size": 2, "max_val_windows": 4},
        },
        "pretrain": {"seq_len": 32, "set": {"trainer.max_steps": 4}, "share": {"swa": "fa"}},
        "extend": {"lengths": list(lengths), "tokens_per_batch": 128,
                   "set": {"trainer.max_steps": 2, "model.lr": 4.0e-4}},
        "evaluate": {"tokens_per_length": 256, "batch_tokens": 256, "last_tokens": 16},
        "where": [{"method": "fa", "stage": "extend", "length": list(lengths),  # the base length keeps its theta
                   "set": {"model.config.rope_theta": 20000.0}}],
    }}


def run_sweep(spec: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightning_ttt", "sweep", str(spec), "--out-dir", str(out), "--quiet",
                           *extra], capture_output=True, text=True, timeout=900)
