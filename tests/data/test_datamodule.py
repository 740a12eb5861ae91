from __future__ import annotations

import json

import pytest
import torch

from lightning_ttt.data import TextDataModule


@pytest.fixture(scope="module")
def stdlib_dm() -> TextDataModule:
    dm = TextDataModule(sources=["stdlib"], seq_len=128, batch_size=4, max_val_windows=10)
    dm.setup("fit")
    return dm


def _check_batch(batch, batch_size, seq_len, bos_id):
    assert set(batch) == {"input_ids", "targets", "loss_mask"}
    assert batch["input_ids"].shape == batch["targets"].shape == batch["loss_mask"].shape == (batch_size, seq_len)
    assert batch["input_ids"].dtype == batch["targets"].dtype == torch.int64
    assert batch["loss_mask"].dtype == torch.bool
    assert torch.equal(batch["input_ids"][:, 1:], batch["targets"][:, :-1])
    assert torch.equal(batch["loss_mask"], batch["targets"] != bos_id)


def test_stdlib_batches(stdlib_dm):
    dm = stdlib_dm
    assert (dm.vocab_size, dm.bos_id, dm.eos_id) == (258, 256, 257)
    assert dm.tokenizer.decode(dm.tokenizer.encode("x = 1")) == "x = 1"
    train = next(iter(dm.train_dataloader()))
    _check_batch(train, 4, 128, dm.bos_id)
    assert int(train["input_ids"].max()) < dm.vocab_size
    val_batches = list(dm.val_dataloader())
    assert sum(len(b["input_ids"]) for b in val_batches) == 10
    _check_batch(val_batches[0], 4, 128, dm.bos_id)
    test = next(iter(dm.test_dataloader()))
    assert torch.equal(test["input_ids"], val_batches[0]["input_ids"])


def test_setup_is_idempotent(stdlib_dm):
    train = stdlib_dm.train_dataset
    stdlib_dm.setup("validate")
    assert stdlib_dm.train_dataset is train


def test_train_shuffle_seeded_and_val_fixed(stdlib_dm):
    a = next(iter(stdlib_dm.train_dataloader()))["input_ids"]
    b = next(iter(stdlib_dm.train_dataloader()))["input_ids"]
    assert torch.equal(a, b)  # same seed, same first batch
    first = stdlib_dm.train_dataset[0]["input_ids"]
    assert not all(torch.equal(row, first) for row in a)  # shuffled, not sequential order
    other = TextDataModule(sources=["stdlib"], seq_len=128, batch_size=4, max_val_windows=10, seed=1)
    other.train_dataset, other.val_dataset = stdlib_dm.train_dataset, stdlib_dm.val_dataset
    assert not torch.equal(next(iter(other.train_dataloader()))["input_ids"], a)
    v1 = next(iter(stdlib_dm.val_dataloader()))["input_ids"]
    v2 = next(iter(stdlib_dm.val_dataloader()))["input_ids"]
    assert torch.equal(v1, v2)


def test_local_jsonl_datamodule(tmp_path):
    rows = [{"text": f"document number {i} " * 20} for i in range(60)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    dm = TextDataModule(sources=[str(tmp_path)], seq_len=32, batch_size=2, val_fraction=0.2, max_val_windows=None)
    dm.setup()
    _check_batch(next(iter(dm.train_dataloader())), 2, 32, dm.bos_id)
    assert len(dm.val_dataset) > 0
    assert len(dm.train_dataset) > len(dm.val_dataset)


@pytest.mark.parametrize(
    "kwargs, setting",
    [
        ({"seq_len": 0}, "seq_len"),
        ({"batch_size": 0}, "batch_size"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"max_val_windows": 0}, "max_val_windows"),
        ({"sources": []}, "sources"),
    ],
)
def test_invalid_args(kwargs, setting):
    with pytest.raises(ValueError, match=setting):
        TextDataModule(**kwargs)


def test_seq_len_too_long_for_corpus(tmp_path):
    for i in range(40):
        (tmp_path / f"{i}.txt").write_text("short")
    dm = TextDataModule(sources=[str(tmp_path)], seq_len=64, val_fraction=0.5)
    with pytest.raises(ValueError, match=r"seq_len") as err:
        dm.setup()
    assert str(tmp_path) in str(err.value)


def test_dataloader_before_setup():
    with pytest.raises(RuntimeError, match="setup"):
        TextDataModule().train_dataloader()
