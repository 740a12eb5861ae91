"""A callback for launch tests (``--trainer.callbacks+=launch_probe.RankReport``): at the end of fit every
rank writes what it trained (steps, its last local training loss) and the loss of one fixed batch under
the weights it ended with, so a test can check that the ranks trained in step on different data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import torch


class RankReport(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ids = torch.randint(0, pl_module.cfg.vocab_size, (2, 65), generator=torch.Generator().manual_seed(0))
        batch = {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": torch.ones(2, 64, dtype=torch.bool)}
        with torch.no_grad():  # every rank takes part: a sharded model gathers its weights for this forward
            fixed = pl_module({k: v.to(pl_module.device) for k, v in batch.items()}, ttt=False, create_graph=False).loss
        report = {"rank": trainer.global_rank, "world_size": trainer.world_size, "global_step": trainer.global_step,
                  "strategy": type(trainer.strategy).__name__, "fixed_batch_loss": fixed.item(),
                  "last_train_loss": float(trainer.callback_metrics["train/loss"])}
        path = self.out_dir / f"rank{trainer.global_rank}.json"
        path.with_suffix(".partial").write_text(json.dumps(report))
        os.replace(path.with_suffix(".partial"), path)
