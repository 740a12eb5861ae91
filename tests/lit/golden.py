"""Golden training losses of the debug recipes: the first steps of each, recorded as data.

    python tests/lit/golden.py            # rewrite tests/lit/golden_losses.json (after an intended change)

Each recipe trains through the real CLI with its own model, optimizer, schedule (over its
``max_steps``), clipping and seed 0, in fp32 on CPU, on a smaller batch (``SMALLER``: 2 x 256
tokens instead of 8 x 512, so that the test takes seconds), stopped after ``STEPS`` steps, with no
logger, checkpoints or validation.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch

from lightning_ttt.lit.cli import cli_main

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().with_name("golden_losses.json")
RECIPES = ("fa", "swa", "e2e", "e2e-naive")
STEPS = 20
THREADS = 1
SMALLER = ["--data.seq_len=256", "--data.batch_size=2"]


class RecordLosses(L.Callback):
    def __init__(self, steps: int) -> None:
        self.steps, self.losses = steps, []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))
        if len(self.losses) == self.steps:
            trainer.should_stop = True


def train_losses(recipe: str, steps: int = STEPS, threads: int = THREADS) -> list[float]:
    """Training loss of each of the first ``steps`` steps of ``recipes/debug/<recipe>.yaml``."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as run_dir:  # the run's config.yaml goes there
            cli = cli_main(["--config", str(REPO / f"recipes/debug/{recipe}.yaml"), "--trainer.logger=false",
                            f"--trainer.default_root_dir={run_dir}", "--trainer.enable_checkpointing=false",
                            "--trainer.callbacks=[]", "--trainer.enable_progress_bar=false",
                            "--trainer.enable_model_summary=false", "--trainer.limit_val_batches=0",
                            "--data.max_val_windows=1", *SMALLER], run=False)
            record = RecordLosses(steps)
            cli.trainer.callbacks.append(record)
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    finally:
        torch.set_num_threads(before)
    return record.losses


def main() -> None:
    golden = {
        "command": "python tests/lit/golden.py",
        "steps": STEPS, "overrides": SMALLER, "threads": THREADS, "torch": torch.__version__,
        "machine": platform.machine(),
        "losses": {recipe: train_losses(recipe) for recipe in RECIPES},
    }
    GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)


if __name__ == "__main__":
    main()
