"""A Trainer with this project's defaults: atomic checkpoints, autograd allowed in evaluation, a model
summary with analytic FLOPs, CPU threads that follow the load, and no empty ``version_N`` folder left by
a run that fails before its first step."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator

from lightning_ttt.lit.callbacks import AdaptiveThreads, with_analytic_flops
from lightning_ttt.lit.checkpoint_io import AtomicCheckpointIO
from lightning_ttt.lit.run_dirs import removing_empty_run_dirs
from lightning_ttt.threads import count_is_fixed


class TTTTrainer(L.Trainer):
    """``lightning.Trainer`` whose evaluation runs without ``inference_mode`` (TTT takes gradient
    steps while evaluating) and whose checkpoints are written atomically and loaded safely."""

    def __init__(self, *args: Any, inference_mode: bool = False, plugins: Any = None, threads: int | None = None,
                 **kwargs: Any) -> None:
        """``threads``: CPU threads for torch; None keeps the current number (``ttt`` starts with the cores
        other processes leave free) and, on CPU without ``OMP_NUM_THREADS``, moves it with the load as the
        run goes (``AdaptiveThreads``). The other arguments are Lightning's."""
        if threads is not None:
            if threads < 1:
                raise ValueError(f"trainer.threads={threads} must be >= 1 (or null: the cores not already busy)")
            torch.set_num_threads(threads)
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else ([plugins] if plugins is not None else [])
        if not any(hasattr(p, "save_checkpoint") for p in plugins) and kwargs.get("strategy") in (None, "auto", "ddp", "ddp_spawn", "single_device"):
            plugins.append(AtomicCheckpointIO())
        super().__init__(*args, inference_mode=inference_mode, plugins=plugins or None, **kwargs)
        self.callbacks = [with_analytic_flops(c) for c in self.callbacks]  # the model summary's FLOPs
        if not count_is_fixed(threads) and isinstance(self.accelerator, CPUAccelerator):
            self.callbacks.append(AdaptiveThreads())

    def fit(self, *args: Any, **kwargs: Any) -> None:
        with removing_empty_run_dirs(self):
            return super().fit(*args, **kwargs)

    def validate(self, *args: Any, **kwargs: Any) -> Any:
        with removing_empty_run_dirs(self):
            return super().validate(*args, **kwargs)

    def test(self, *args: Any, **kwargs: Any) -> Any:
        with removing_empty_run_dirs(self):
            return super().test(*args, **kwargs)
