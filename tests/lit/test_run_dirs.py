"""A fit that fails before its first step leaves no empty ``version_N`` folder; other folders stay."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_ttt.data import LongContextDataModule
from lightning_ttt.data.documents import is_validation
from lightning_ttt.lit.module import TTTLanguageModel
from lightning_ttt.lit.run_dirs import is_empty_run_dir
from lightning_ttt.lit.trainer import TTTTrainer


def _trainer(save_dir: Path) -> TTTTrainer:
    return TTTTrainer(max_steps=1, accelerator="cpu", logger=TensorBoardLogger(save_dir, name="small"),
                      enable_progress_bar=False, enable_model_summary=False)


def test_a_fit_that_fails_in_setup_leaves_no_version_folder(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in [n for n in (f"doc{i}.txt" for i in range(40)) if not is_validation(n, 0.05)][:10]:
        (corpus / name).write_text("the same words again " * 50)
    runs = tmp_path / "runs"
    (runs / "small" / "version_0").mkdir(parents=True)  # an earlier run's folder stays
    (runs / "small" / "version_0" / "events.out.tfevents.1.host.1.0").write_bytes(b"x")
    model, data = TTTLanguageModel(preset="debug", seq_len=64), LongContextDataModule(sources=[str(corpus)], seq_len=64)
    with pytest.raises(ValueError, match="data.val_sources"):
        _trainer(runs).fit(model, data)
    assert sorted(p.name for p in (runs / "small").iterdir()) == ["version_0"]


def test_only_folders_holding_nothing_but_this_process_s_start_are_empty(tmp_path: Path) -> None:
    mine = f"events.out.tfevents.1796286271.my.host.{os.getpid()}.0"
    (tmp_path / mine).write_bytes(b"x")
    (tmp_path / "hparams.yaml").write_text("{}")
    assert is_empty_run_dir(tmp_path)
    (tmp_path / "events.out.tfevents.1796286271.my.host.1.0").write_bytes(b"x")  # another process's logs
    assert not is_empty_run_dir(tmp_path)
    (tmp_path / "events.out.tfevents.1796286271.my.host.1.0").unlink()
    (tmp_path / "checkpoints").mkdir()
    assert not is_empty_run_dir(tmp_path)
