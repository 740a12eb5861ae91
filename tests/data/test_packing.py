"""Split rule, length filter, the two packings and batch layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_ttt.data import ByteTokenizer, ConcatPacker, DocumentPacker, DocumentReader, is_validation, make_batch
from lightning_ttt.data.documents import document_key

BOS, EOS = -1, -2  # synthetic specials, distinct from every document token


def _doc(i: int, n: int) -> np.ndarray:
    """Document i uses token ids [i * 1000, i * 1000 + n)."""
    return np.arange(i * 1000, i * 1000 + n, dtype=np.int32)


def _windows(packer, docs) -> list[tuple[np.ndarray, int]]:
    out = []
    for doc in docs:
        packer.push(doc)
        while (w := packer.pop()) is not None:
            out.append((w[0].copy(), w[1]))
    return out


# --- split and reader ------------------------------------------------------------------------


def test_split_rule_is_pinned():
    # sha1(name) % 1000: doc2 -> 36, doc0 -> 74, w -> 170, stdlib/os.py -> 786 (pinned so the rule cannot drift)
    assert is_validation("doc2", 0.05) and not is_validation("doc0", 0.05)
    assert is_validation("doc0", 0.075) and not is_validation("doc0", 0.074)
    assert is_validation("w", 0.2) and not is_validation("stdlib/os.py", 0.7)


def test_reader_splits_disjointly_and_filters_short_docs():
    tok = ByteTokenizer()
    recs = [{"name": f"d{i}", "text": "x" * (i % 7)} for i in range(200)]
    train = DocumentReader(tok, split="train", val_fraction=0.2, min_doc_tokens=3)
    val = DocumentReader(tok, split="validation", val_fraction=0.2, min_doc_tokens=3)
    kept_train = {d.name for r in recs if (d := train(r)) is not None}
    kept_val = {d.name for r in recs if (d := val(r)) is not None}
    assert kept_train and kept_val and not kept_train & kept_val
    assert train.counts.docs + val.counts.docs == 200  # every record read by exactly one split
    assert train.counts.short + val.counts.short == sum(1 for i in range(200) if i % 7 < 3)
    assert all(is_validation(n, 0.2) for n in kept_val)


def test_unnamed_records_split_by_content_hash():
    key = document_key({"text": "some book"})
    assert key.startswith("sha1:") and key == document_key({"text": b"some book"})
    assert document_key({"name": "a.txt:3", "text": "x"}) == "a.txt:3"


def test_prepared_tokens_checked_against_vocabulary():
    reader = DocumentReader(ByteTokenizer())
    assert reader({"name": "ok", "tokens": np.array([1, 257], np.uint16)}).tokens.dtype == np.int32
    with pytest.raises(ValueError, match=r"^big: token id 300 is outside the tokenizer's vocabulary \(vocab_size=258"):
        reader({"name": "big", "tokens": np.array([1, 300], np.uint16)})


# --- document packing ------------------------------------------------------------------------


def test_document_windows_never_cross_documents_and_shift():
    packer = DocumentPacker(8, BOS, EOS)
    windows = _windows(packer, [_doc(i, n) for i, n in enumerate([30, 7, 50, 3, 17])])
    # with bos/eos: 32, 9, 52, 5, 19 tokens -> (L - 1) // 8 windows: 3, 1, 6, 0 (dropped), 2
    assert len(windows) == 12 and packer.counts == {"windows": 12, "padded": 0, "unwindowed": 1}
    for w, valid in windows:
        assert w.shape == (9,) and valid == 9
        real = w[w >= 0]
        assert len(set((real // 1000).tolist())) == 1, "window mixes documents"


def test_document_windows_cover_every_target_once():
    packer = DocumentPacker(4, BOS, EOS)
    windows = _windows(packer, [_doc(0, 21)])  # 23 tokens with bos/eos -> 5 windows, targets 0..19
    targets = np.concatenate([w[1:] for w, _ in windows])
    assert targets.tolist() == list(range(20))
    assert windows[0][0].tolist() == [BOS, 0, 1, 2, 3]


def test_document_tail_pad_masks_padding():
    tok = ByteTokenizer()
    packer = DocumentPacker(8, tok.bos_id, tok.eos_id, tail="pad")
    windows = _windows(packer, [tok.encode("abc"), tok.encode("0123456789")])
    # "abc": 5 tokens -> one padded window; "0123456789": 12 tokens -> 1 full + 1 padded (4 real)
    assert [v for _, v in windows] == [5, 9, 4]
    assert packer.counts == {"windows": 3, "padded": 2, "unwindowed": 0}
    batch = make_batch(np.stack([w for w, _ in windows]), np.array([v for _, v in windows]), tok.bos_id)
    assert batch["loss_mask"].sum(1).tolist() == [4, 8, 3]
    assert batch["targets"][0, :4].tolist() == [*tok.encode("abc").tolist(), tok.eos_id]
    assert batch["targets"][2, :3].tolist() == [*tok.encode("89").tolist(), tok.eos_id]


# --- concat packing --------------------------------------------------------------------------


def test_concat_joins_documents_and_masks_bos_targets():
    packer = ConcatPacker(8, BOS, EOS)
    docs = [_doc(i, n) for i, n in enumerate([5, 2, 11, 3])]
    windows = _windows(packer, docs)
    stream = np.concatenate([np.concatenate([[BOS], d, [EOS]]) for d in docs])  # 29 tokens
    assert len(windows) == (len(stream) - 1) // 8 == 3
    for k, (w, valid) in enumerate(windows):
        assert w.tolist() == stream[k * 8:k * 8 + 9].tolist() and valid == 9
    batch = make_batch(np.stack([w for w, _ in windows]), np.full(3, 9), BOS)
    assert torch.equal(batch["loss_mask"], batch["targets"] != BOS)
    assert (~batch["loss_mask"]).sum() == (np.concatenate([w[1:] for w, _ in windows]) == BOS).sum() > 0
    assert len(packer.pending) - packer.cursor == len(stream) - 3 * 8  # remainder carried over


def test_packer_state_round_trip():
    a = ConcatPacker(8, BOS, EOS)
    a.push(_doc(0, 13))
    a.pop()
    b = ConcatPacker(8, BOS, EOS)
    b.load_state_dict(a.state_dict())
    for packer in (a, b):
        packer.push(_doc(1, 20))
    assert [w.tolist() for w, _ in _windows(a, [])] == [w.tolist() for w, _ in _windows(b, [])]


def test_make_batch_layout():
    windows = np.arange(2 * 9, dtype=np.int32).reshape(2, 9)
    batch = make_batch(windows, np.array([9, 9]), bos_id=100)
    assert set(batch) == {"input_ids", "targets", "loss_mask"}
    assert batch["input_ids"].shape == batch["targets"].shape == (2, 8)
    assert batch["input_ids"].dtype == batch["targets"].dtype == torch.int64 and batch["loss_mask"].dtype == torch.bool
    assert torch.equal(batch["input_ids"][:, 1:], batch["targets"][:, :-1])
    assert batch["input_ids"].is_contiguous() and batch["loss_mask"].all()
