"""LongContextDataModule: batches, validation, settings, tokenizers and the saved data position."""

from __future__ import annotations

import re
from itertools import islice

import numpy as np
import pytest
import torch
from corpora import doc_text, write_jsonl_shards

from lightning_ttt.data import LongContextDataModule
from lightning_ttt.data.validation import ValidationWindows


@pytest.fixture(scope="module")
def stdlib_dm() -> LongContextDataModule:
    dm = LongContextDataModule(sources=["stdlib"], seq_len=128, batch_size=4, max_val_windows=10)
    dm.setup("fit")
    return dm


def _check_batch(batch, batch_size, seq_len, bos_id):
    assert batch["input_ids"].shape == batch["targets"].shape == batch["loss_mask"].shape == (batch_size, seq_len)
    assert batch["input_ids"].dtype == batch["targets"].dtype == torch.int64
    assert batch["loss_mask"].dtype == torch.bool
    assert torch.equal(batch["input_ids"][:, 1:], batch["targets"][:, :-1])
    assert torch.equal(batch["loss_mask"], batch["targets"] != bos_id)


def test_stdlib_batches(stdlib_dm):
    dm = stdlib_dm
    assert (dm.vocab_size, dm.bos_id, dm.eos_id) == (258, 256, 257)
    train = next(iter(dm.train_dataloader()))
    assert set(train) == {"input_ids", "targets", "loss_mask", "_state"}
    _check_batch(train, 4, 128, dm.bos_id)
    assert int(train["input_ids"].max()) < dm.vocab_size
    val = list(dm.val_dataloader())
    assert [len(b["input_ids"]) for b in val] == [4, 4, 2]  # max_val_windows=10
    _check_batch(val[0], 4, 128, dm.bos_id)
    assert torch.equal(next(iter(dm.test_dataloader()))["input_ids"], val[0]["input_ids"])
    assert torch.equal(next(iter(dm.val_dataloader()))["input_ids"], val[0]["input_ids"])  # fixed


def _doc_ids(input_ids: torch.Tensor) -> set[int]:
    """Documents of ``doc_text`` tag every word ``<doc>.<word>:``; recover the doc ids in windows."""
    text = (bytes(row[row < 256].tolist()) for row in input_ids)
    return {int(m) for t in text for m in re.findall(rb" (\d+)\.\d+:", t)}  # whole tags only


def test_train_and_validation_documents_are_disjoint(tmp_path):
    write_jsonl_shards(tmp_path / "c", num_files=2, docs_per_file=20)
    dm = LongContextDataModule(sources=[str(tmp_path / "c")], seq_len=64, batch_size=4, val_fraction=0.3,
                               max_val_windows=None)
    dm.setup()
    val = _doc_ids(torch.from_numpy(dm.validation[0]))
    train = set().union(*(_doc_ids(b["input_ids"]) for b in islice(dm.train_dataloader(), 100)))
    assert val and train and not val & train
    assert len(val | train) == 40


def test_setup_is_idempotent(stdlib_dm):
    records = stdlib_dm.train_records
    stdlib_dm.setup("validate")
    assert stdlib_dm.train_records is records


def test_consumed_batches_move_the_position(stdlib_dm):
    dm = LongContextDataModule(sources=["stdlib"], seq_len=128, batch_size=4, max_val_windows=10)
    dm.train_records, dm.validation = stdlib_dm.train_records, stdlib_dm.validation
    loader = iter(dm.train_dataloader())
    first, second, third = next(loader), next(loader), next(loader)
    for batch in (first, second):
        assert "_state" not in dm.on_before_batch_transfer(batch, 0)
    resumed = next(iter(dm.train_dataloader()))  # a new loader continues after the consumed batches
    assert torch.equal(resumed["input_ids"], third["input_ids"])
    state = dm.state_dict()
    assert state["ranks"][0]["batches"] == 2 and set(state["ranks"][0]["states"]) == {0}


def test_local_corpus_with_bpe_tokenizer(tmp_path, bpe_path):
    write_jsonl_shards(tmp_path / "c", num_files=2, docs_per_file=10)
    dm = LongContextDataModule(sources=[str(tmp_path / "c")], tokenizer=str(bpe_path), seq_len=32, batch_size=2,
                               val_fraction=0.2, max_val_windows=None)
    assert (dm.bos_id, dm.eos_id) == (0, 1) and dm.vocab_size == dm.tokenizer.vocab_size
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    _check_batch(batch, 2, 32, dm.bos_id)
    assert int(batch["input_ids"].max()) < dm.vocab_size
    assert len(dm.validation[0]) > 0


def test_explicit_validation_sources_and_concat_packing(tmp_path):
    write_jsonl_shards(tmp_path / "train", num_files=2, docs_per_file=4)
    (tmp_path / "val.txt").write_text(doc_text(999) * 3)
    dm = LongContextDataModule(sources=[str(tmp_path / "train")], val_sources=[str(tmp_path / "val.txt")],
                               packing="concat", seq_len=64, batch_size=2, max_val_windows=None)
    dm.setup()
    assert dm.train_split == "all"  # no hash split when validation has its own sources
    windows = dm.validation[0]
    assert len(windows) == (len(doc_text(999) * 3) + 2 - 1) // 64
    assert bytes(windows[0, 1:17].astype(np.uint8).tolist()) == doc_text(999)[:16].encode()
    batches = list(islice(dm.train_dataloader(), 10))
    inputs = torch.cat([b["input_ids"] for b in batches])
    assert (inputs[:, 1:] == dm.bos_id).any()  # a window that spans two joined documents
    for b in batches:
        assert torch.equal(b["loss_mask"], b["targets"] != dm.bos_id)


@pytest.mark.parametrize("kwargs, message", [
    ({"seq_len": 0}, "data.seq_len must be >= 1"),
    ({"batch_size": 0}, "data.batch_size must be >= 1"),
    ({"val_fraction": 1.0}, r"data.val_fraction must be in \[0, 1\)"),
    ({"max_val_windows": 0}, "data.max_val_windows must be >= 1 or None"),
    ({"sources": []}, "data.sources must be a non-empty list"),
    ({"val_sources": "x.txt"}, "data.val_sources must be a non-empty list"),
    ({"packing": "greedy"}, "data.packing='greedy' is unknown; expected one of document, concat"),
    ({"tail": "keep"}, "data.tail='keep' is unknown; expected one of drop, pad"),
    ({"shuffle_buffer": -1}, "data.shuffle_buffer must be >= 0"),
    ({"min_doc_tokens": -1}, "data.min_doc_tokens must be >= 0"),
    ({"num_workers": -1}, "data.num_workers must be >= 0"),
    ({"distribute": "nodes"}, "data.distribute='nodes' is unknown; expected one of auto, shards, examples"),
    ({"invalid_utf8": "skip"}, "data.invalid_utf8='skip' is unknown"),
])
def test_invalid_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        LongContextDataModule(**kwargs)
    assert "\n" not in str(err.value)


def test_no_document_reaches_the_window(tmp_path):
    for i in range(40):
        (tmp_path / f"{i}.txt").write_text("short")
    dm = LongContextDataModule(sources=[str(tmp_path)], seq_len=64, val_fraction=0.5)
    with pytest.raises(ValueError, match=r"no validation window: 0 windows of 64 tokens \(0 scored tokens\) from 0 of \d+ documents") as err:
        dm.setup()
    assert str(tmp_path) in str(err.value)
    dm = LongContextDataModule(sources=[str(tmp_path)], seq_len=64, val_fraction=0.0)
    with pytest.raises(ValueError, match=r"train split of .*: no document reaches seq_len \+ 1 = 65 tokens"):
        dm.setup()


def test_min_doc_tokens_filters(tmp_path):
    (tmp_path / "short.txt").write_text("x" * 100)
    (tmp_path / "long.txt").write_text("y" * 1000)
    dm = LongContextDataModule(sources=[str(tmp_path)], seq_len=32, val_fraction=0, min_doc_tokens=500)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["input_ids"].unique().tolist()) <= {dm.bos_id, ord("y")}


def test_dataloader_before_setup():
    with pytest.raises(RuntimeError, match="setup"):
        LongContextDataModule().train_dataloader()


def test_validation_windows_divide_evenly_over_ranks():
    windows, valid = np.zeros((10, 9), np.int32), np.full(10, 9)
    assert len(ValidationWindows(windows, valid, 0, world_size=3)) == 9
    assert len(ValidationWindows(windows, valid, 0, world_size=1)) == 10


def test_restored_position_must_match_settings_and_tokenizer(stdlib_dm, bpe_path):
    state = stdlib_dm.state_dict()
    other = LongContextDataModule(sources=["stdlib"], seq_len=64, batch_size=4, max_val_windows=10, num_workers=1)
    other.train_records = stdlib_dm.train_records
    other.load_state_dict(state)
    with pytest.raises(ValueError, match=r"cannot resume the data position exactly: data.seq_len=64 \(checkpoint: "
                                         r"128\), data.num_workers=1 \(checkpoint: 0\); .*exact_resume=false"):
        other.train_dataloader()
    relaxed = LongContextDataModule(sources=["stdlib"], seq_len=64, max_val_windows=10, exact_resume=False)
    relaxed.train_records = stdlib_dm.train_records
    relaxed.load_state_dict(state)
    assert next(iter(relaxed.train_dataloader()))["input_ids"].shape == (8, 64)
    bpe = LongContextDataModule(tokenizer=str(bpe_path))
    with pytest.raises(ValueError, match=r"trained with tokenizer 'bytes' \(vocab_size 258\) but data.tokenizer="):
        bpe.load_state_dict(state)


def _training_only_corpus(path, count: int = 10) -> list[str]:
    """``count`` documents whose names the hash split (val_fraction 0.05) all keeps for training."""
    from lightning_ttt.data.documents import is_validation

    names = [n for n in (f"doc{i}.txt" for i in range(100)) if not is_validation(n, 0.05)][:count]
    for name in names:
        (path / name).write_text(doc_text(len(name)) * 8)
    return names


def test_a_small_corpus_without_validation_documents_says_how_to_give_them(tmp_path):
    corpus, held_out = tmp_path / "corpus", tmp_path / "held_out.txt"
    corpus.mkdir()
    names = _training_only_corpus(corpus)
    assert len(names) == 10
    dm = LongContextDataModule(sources=[str(corpus)], seq_len=64)
    with pytest.raises(ValueError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert "\n" not in message and "data.val_fraction=0.05 holds out none of its documents" in message
    assert "data.val_sources" in message and str(corpus) in message
    held_out.write_text(doc_text(3) * 8)
    dm = LongContextDataModule(sources=[str(corpus)], val_sources=[str(held_out)], seq_len=64)
    dm.setup("fit")
    assert len(dm.val_dataloader().dataset) > 0
    dm = LongContextDataModule(sources=[str(corpus)], seq_len=64, val_fraction=0)
    dm.setup("fit")
    assert dm.val_dataloader() == []
