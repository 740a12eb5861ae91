"""Two ranks (gloo, CPU, ddp_spawn) with two workers each: disjoint training windows per rank and
worker, the same number of validation batches on both ranks, and both positions in the checkpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from corpora import write_jsonl_shards
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_ttt.data import LongContextDataModule
from lightning_ttt.lit import TTTLanguageModel, TTTTrainer

STEPS = 2


class RecordingData(LongContextDataModule):
    """Notes which stream (worker) each training batch came from before the position is recorded."""

    streams: list[int] = []

    def on_before_batch_transfer(self, batch, dataloader_idx):
        if "_state" in batch:
            self.streams = [*self.streams, int(batch["_state"]["stream"])]
        return super().on_before_batch_transfer(batch, dataloader_idx)


class Recorder(Callback):
    """Writes what this rank trained and validated on to ``<out>/rank<r>.json``."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.train: list[list[str]] = []
        self.val_batches = 0
        self.val: list[str] = []

    @staticmethod
    def _rows(batch) -> list[str]:
        return [hashlib.sha1(row.numpy().tobytes()).hexdigest() for row in batch["input_ids"]]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train.append(self._rows(batch))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.val_batches += 1
        self.val.extend(self._rows(batch))

    def on_fit_end(self, trainer, pl_module) -> None:
        record = {"train": self.train, "streams": trainer.datamodule.streams, "val_batches": self.val_batches,
                  "val": self.val}
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.mark.slow
def test_two_ranks_two_workers(tmp_path):
    write_jsonl_shards(tmp_path / "corpus", num_files=4, docs_per_file=8)
    data = RecordingData(sources=[str(tmp_path / "corpus")], seq_len=64, batch_size=2, num_workers=2,
                         shuffle_buffer=8, val_fraction=0.25, max_val_windows=7)
    model = TTTLanguageModel(config={"d_model": 32, "n_layers": 2, "n_heads": 4, "mlp_hidden": 64, "window": 32,
                                     "mini_batch": 16}, seq_len=64, vocab_size=data.vocab_size, bos_id=data.bos_id,
                             eos_id=data.eos_id)
    trainer = TTTTrainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=STEPS, val_check_interval=2,
                         check_val_every_n_epoch=None, num_sanity_val_steps=0, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[Recorder(str(tmp_path)),
                                    ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=STEPS)])
    trainer.fit(model, data)

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    by_stream: dict[tuple[int, int], set[str]] = {}
    for r, rank in enumerate(ranks):
        assert len(rank["train"]) == STEPS and rank["streams"] == [0, 1]  # workers take turns
        for stream, rows in zip(rank["streams"], rank["train"], strict=True):
            by_stream.setdefault((r, stream), set()).update(rows)
    parts = list(by_stream.values())
    assert len(parts) == 4 and sum(map(len, parts)) == 2 * STEPS * 2  # 4 (rank, worker) streams, no repeats
    assert all(not parts[i] & parts[j] for i in range(4) for j in range(i + 1, 4))  # disjoint windows

    # validation at step 2: 7 windows -> 6, 3 per rank -> batches of 2 + 1
    assert ranks[0]["val_batches"] == ranks[1]["val_batches"] == 2
    assert not set(ranks[0]["val"]) & set(ranks[1]["val"])

    state = torch.load(next((tmp_path / "ckpt").glob("*.ckpt")), map_location="cpu", weights_only=True)
    saved = state["LongContextDataModule"] if "LongContextDataModule" in state else state["RecordingData"]
    assert len(saved["ranks"]) == 2  # rank 1's position is in rank 0's file
    assert [r["batches"] for r in saved["ranks"]] == [STEPS, STEPS]
    assert all(set(r["states"]) == {0, 1} for r in saved["ranks"])
