"""TTTTrainer's own settings: ``threads``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_ttt.cli import main
from lightning_ttt.lit.trainer import TTTTrainer


def test_threads_sets_torch_threads_and_none_keeps_them() -> None:
    before = torch.get_num_threads()
    try:
        TTTTrainer(threads=1, logger=False, accelerator="cpu")
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        TTTTrainer(logger=False, accelerator="cpu")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_bad_threads_is_one_line(capsys, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"trainer.threads=0 must be >= 1"):
        TTTTrainer(threads=0, logger=False)
    e2e = str(Path(__file__).resolve().parents[2] / "recipes/debug/e2e.yaml")
    assert main(["fit", "--config", e2e, "--trainer.threads", "0", f"--trainer.default_root_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "ttt fit: error: trainer.threads=0 must be >= 1 (or null: the cores not already busy)")
