"""Callbacks the LightningModule brings along (``TTTLanguageModel.configure_callbacks``)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, RichModelSummary, ThroughputMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_summary.model_summary import get_human_readable_count

from lightning_ttt.metrics import plot_nll_by_position, write_position_report
from lightning_ttt.threads import ThreadGovernor

FINAL_METRICS = ("val/loss", "val/ppl", "train/loss")  # shown beside a fit's settings in the HPARAMS tab


class PositionReport(L.Callback):
    """After each validation and test: the per-position NLL report in the run directory
    (``<log_dir>/nll_by_position/<split>-step<N>.{json,csv}``) and the NLL-by-position figure in
    TensorBoard (``<split>/nll_by_position``), from the module's ``last_eval``; ``N`` is the step its
    scalars are logged at (the optimizer steps behind the weights evaluated). Rank 0 only; nothing
    during the sanity check."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module)

    def _report(self, trainer: L.Trainer, module: Any) -> None:
        result = getattr(module, "last_eval", None)
        if trainer.sanity_checking or not trainer.is_global_zero or not result or trainer.logger is None:
            return
        split, step = result["split"], result["step"]
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


class TrainThroughput(ThroughputMonitor):
    """Lightning's ThroughputMonitor for training only: per device ``train/device/batches_per_sec``,
    ``samples_per_sec``, ``items_per_sec`` (tokens) and ``flops_per_sec`` (from the module's
    ``flops_per_batch``), and with several devices the same for all of them (``train/items_per_sec``, ...);
    averaged over the last ``window_size`` steps (fewer in a shorter run), logged from the window's
    second step on. Evaluation batches are still timed (so they are not counted as training time) but
    not logged: their batch index is not a training step."""

    def __init__(self, window_size: int = 10) -> None:
        super().__init__(batch_size_fn=lambda batch: batch["input_ids"].shape[0],
                         length_fn=lambda batch: batch["input_ids"].numel(), separator="/")
        self.window_size = window_size

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else self.window_size
        self.kwargs["window_size"] = max(2, min(self.window_size, steps))
        super().setup(trainer, pl_module, stage)

    def _compute(self, trainer: L.Trainer, iter_num: int | None = None) -> None:
        if trainer.state.stage == RunningStage.TRAINING:
            super()._compute(trainer, iter_num)


class _AnalyticFlops:
    """A model summary whose FLOPs are the analytic count of one training batch (``model_flops``: forward +
    backward, matrix multiplications), on the total line and the ``model`` row, instead of the ones
    Lightning measures only for a model with an ``example_input_array`` (all 0 here)."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if not self._max_depth:
            return
        summary = self._summary(trainer, pl_module)
        flops = pl_module.training_flops_per_batch()
        columns = summary._get_summary_data()
        names = dict(columns)["Name"]
        columns = [(title, [get_human_readable_count(flops) if name == "model" else "-" for name in names])
                   if title == "FLOPs" else (title, values) for title, values in columns]
        if trainer.is_global_zero:
            self.summarize(columns, summary.total_parameters, summary.trainable_parameters, summary.model_size,
                           summary.total_training_modes, total_flops=flops, **self._summarize_kwargs)
            rank_zero_info(f"FLOPs: {pl_module.flops_description()}")


class FlopsModelSummary(_AnalyticFlops, ModelSummary):
    """Lightning's text model summary with the analytic FLOPs of a training batch."""


class FlopsRichModelSummary(_AnalyticFlops, RichModelSummary):
    """Lightning's rich model summary with the analytic FLOPs of a training batch."""


def with_analytic_flops(callback: L.Callback) -> L.Callback:
    """Lightning's model summary callbacks replaced by their analytic-FLOPs twins; others as they are."""
    twin = {ModelSummary: FlopsModelSummary, RichModelSummary: FlopsRichModelSummary}.get(type(callback))
    return callback if twin is None else twin(max_depth=callback._max_depth, **callback._summarize_kwargs)


class HparamsSummary(L.Callback):
    """At the end of every fit: the run's settings (``module.run_settings()``) with its final metrics
    (``hparam/val_loss``, ``hparam/val_ppl``, ``hparam/train_loss``) for TensorBoard's HPARAMS tab."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        found = trainer.callback_metrics
        metrics = {f"hparam/{name.replace('/', '_')}": float(found[name]) for name in FINAL_METRICS if name in found}
        if not metrics:
            return
        settings = pl_module.run_settings()
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(settings, metrics=metrics, step=trainer.global_step)
            else:
                logger.log_hyperparams(settings)
                logger.log_metrics(metrics, step=trainer.global_step)


class AdaptiveThreads(L.Callback):
    """Moves torch's CPU threads with the load while the run goes on (``lightning_ttt.threads.ThreadGovernor``),
    polled after every training and evaluation batch; the run's starting count is set back at its end.
    ``TTTTrainer`` adds it on CPU unless ``--trainer.threads`` or ``OMP_NUM_THREADS`` fixed the count."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self.governor: ThreadGovernor | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.governor = ThreadGovernor(self.every_s)

    def _poll(self, trainer: L.Trainer) -> None:
        note = self.governor.poll() if self.governor is not None else None
        if note:
            rank_zero_info(f"step {trainer.global_step}: {note} (--trainer.threads N fixes the count)")

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._poll(trainer)

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._poll(trainer)

    def on_test_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._poll(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.governor is not None:
            self.governor.restore()
            self.governor = None
