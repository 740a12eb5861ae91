"""Callbacks the LightningModule brings along (``TTTLanguageModel.configure_callbacks``)."""

from __future__ import annotations

from typing import Any

import lightning as L

from lightning_ttt.metrics import plot_nll_by_position, write_position_report


class PositionReport(L.Callback):
    """After each validation and test: the per-position NLL report in the run directory
    (``<log_dir>/nll_by_position/<split>-step<N>.{json,csv}``) and the NLL-by-position figure in
    TensorBoard (``<split>/nll_by_position``), from the module's ``last_eval``. Rank 0 only; nothing
    during the sanity check."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module)

    def _report(self, trainer: L.Trainer, module: Any) -> None:
        result = getattr(module, "last_eval", None)
        if trainer.sanity_checking or not trainer.is_global_zero or not result or trainer.logger is None:
            return
        split, step = result["split"], trainer.global_step
        log_dir = getattr(trainer.logger, "log_dir", None)
        if log_dir:
            write_position_report(result["report"], f"{log_dir}/nll_by_position/{split}-step{step:06d}")
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_figure"):
            cfg = module.cfg
            ttt = cfg.method == "e2e" and module.hparams.eval_ttt
            tag = f"{split}/nll_by_position"
            fig = plot_nll_by_position({cfg.name + (" (TTT)" if ttt else ""): result["curve"]},
                                       title=f"{tag} at step {step}", window=cfg.attention_window,
                                       mini_batch=cfg.mini_batch if cfg.method == "e2e" else None)
            experiment.add_figure(tag, fig, global_step=step, close=True)
