"""TTTTrainer's own settings: ``threads``, and the thread count that follows the load when it is not set."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_ttt.cli import main
from lightning_ttt.lit.callbacks import AdaptiveThreads
from lightning_ttt.lit.module import TTTLanguageModel
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


def _adaptive(trainer: TTTTrainer) -> list[AdaptiveThreads]:
    return [c for c in trainer.callbacks if isinstance(c, AdaptiveThreads)]


def test_threads_follow_the_load_only_when_nothing_fixed_them(monkeypatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert len(_adaptive(TTTTrainer(logger=False, accelerator="cpu"))) == 1
        assert _adaptive(TTTTrainer(threads=2, logger=False, accelerator="cpu")) == []
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert _adaptive(TTTTrainer(logger=False, accelerator="cpu")) == []
    finally:
        torch.set_num_threads(before)


class _Threads(L.Callback):
    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_train_batch_end(self, *args) -> None:
        self.seen.append(torch.get_num_threads())


def test_a_fit_drops_to_one_thread_when_other_jobs_fill_the_cores_and_restores_the_count(monkeypatch, caplog) -> None:
    import lightning_ttt.threads as threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "logical_cores", lambda: 2)
    monkeypatch.setattr(threads, "physical_cores", lambda: 2)
    monkeypatch.setattr(threads.CpuMeter, "others", lambda self: 2.0)  # two busy neighbours all along
    ids = torch.randint(0, 256, (4, 33), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": r[:-1], "targets": r[1:], "loss_mask": torch.ones(32, dtype=torch.bool)} for r in ids]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = _Threads()
        trainer = TTTTrainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu", callbacks=[seen])
        _adaptive(trainer)[0].every_s = 0.0
        with caplog.at_level("INFO"):
            trainer.fit(TTTLanguageModel(preset="debug", method="e2e", seq_len=32), torch.utils.data.DataLoader(data, batch_size=1))
        assert seen.seen == [2, 2, 1, 1]  # set after the second batch, whose reading agrees with the first
        assert "step 2: 1 CPU thread instead of 2: other processes use 2.0 cores (--trainer.threads N fixes the count)" in caplog.text
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
