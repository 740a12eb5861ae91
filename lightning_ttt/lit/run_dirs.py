"""A run that fails before its first step leaves no empty ``version_N`` folder behind."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L

LEFT_BY_A_FAILED_START = ("hparams.yaml", "config.yaml")  # written by the logger and the CLI before/after a failure


def _written_by_this_process(name: str) -> bool:
    """A TensorBoard event file of this process: ``events.out.tfevents.<time>.<host>.<pid>.<n>``."""
    return name.startswith("events.out.tfevents.") and f".{os.getpid()}." in name


def is_empty_run_dir(path: Path) -> bool:
    """Holds nothing but this process's event files, hparams.yaml and config.yaml: no checkpoint, no
    earlier run's logs."""
    entries = list(path.iterdir())
    return all(p.is_file() and (p.name in LEFT_BY_A_FAILED_START or _written_by_this_process(p.name)) for p in entries)


def remove_empty_run_dirs(trainer: L.Trainer) -> list[Path]:
    """Delete the loggers' version folders of a run that took no step and left nothing; returns them."""
    if not trainer.is_global_zero or trainer.global_step > 0:
        return []
    removed = []
    for logger in trainer.loggers:
        log_dir = getattr(logger, "log_dir", None)
        path = Path(log_dir) if log_dir else None
        if path is None or not path.is_dir() or not is_empty_run_dir(path):
            continue
        shutil.rmtree(path)
        removed.append(path)
        if not any(path.parent.iterdir()):  # runs/<name>/ made for this run alone
            path.parent.rmdir()
    return removed


@contextmanager
def removing_empty_run_dirs(trainer: L.Trainer) -> Iterator[None]:
    """Around ``trainer.fit`` (validate, test): if it fails or is interrupted before a step, remove its empty
    version folders."""
    try:
        yield
    except BaseException:
        remove_empty_run_dirs(trainer)
        raise
    if trainer.interrupted:
        remove_empty_run_dirs(trainer)
