from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from lightning_ttt.data import ByteTokenizer, Document, WindowDataset, load_documents, split_documents
from lightning_ttt.data.corpus import is_validation

TOK = ByteTokenizer()


@pytest.fixture(scope="module")
def stdlib_docs() -> list[Document]:
    return load_documents(["stdlib"], TOK, progress=False)


# --- stdlib corpus -----------------------------------------------------------------------


def test_stdlib_corpus_nonempty_and_filtered(stdlib_docs):
    assert len(stdlib_docs) > 100
    names = [d.name for d in stdlib_docs]
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    assert "stdlib/json/decoder.py" in names
    for name in names:
        parts = name.split("/")[1:-1]
        assert not {"site-packages", "test", "tests"} & set(parts), name
    assert all(d.tokens.dtype == np.int32 for d in stdlib_docs)
    assert sum(len(d.tokens) for d in stdlib_docs) > 1_000_000


def test_stdlib_split_deterministic_and_disjoint(stdlib_docs):
    again = load_documents(["stdlib"], TOK, progress=False)
    assert [d.name for d in again] == [d.name for d in stdlib_docs]
    assert all(np.array_equal(a.tokens, b.tokens) for a, b in zip(again, stdlib_docs))

    train1, val1 = split_documents(stdlib_docs, 0.05)
    train2, val2 = split_documents(again, 0.05)
    assert [d.name for d in val1] == [d.name for d in val2]
    assert [d.name for d in train1] == [d.name for d in train2]
    t, v = {d.name for d in train1}, {d.name for d in val1}
    assert not t & v
    assert len(t) + len(v) == len(stdlib_docs)
    assert 0 < len(v) < 0.15 * len(stdlib_docs)


def test_split_rule_matches_spec():
    # sha1(name) % 1000: doc2 -> 36, doc0 -> 74, w -> 170, stdlib/os.py -> 786 (pinned so the rule cannot drift)
    assert is_validation("doc2", 0.05) and not is_validation("doc0", 0.05)
    assert is_validation("doc0", 0.075) and not is_validation("doc0", 0.074)
    assert is_validation("w", 0.2) and not is_validation("stdlib/os.py", 0.7)
    docs = [Document(n, np.zeros(1, np.int32)) for n in ["doc0", "doc2", "w"]]
    train, val = split_documents(docs, 0.05)
    assert [d.name for d in train] == ["doc0", "w"] and [d.name for d in val] == ["doc2"]


def test_split_fraction_validated():
    with pytest.raises(ValueError, match="val_fraction"):
        split_documents([], 0.0)


# --- windows -----------------------------------------------------------------------------


def _synthetic(lengths: list[int]) -> list[Document]:
    """Document i uses token ids from its own range [i * 1000, i * 1000 + length)."""
    return [Document(f"doc{i}", np.arange(i * 1000, i * 1000 + n, dtype=np.int32)) for i, n in enumerate(lengths)]


def test_windows_never_cross_documents_and_shift():
    seq_len, bos, eos = 8, -1, -2
    docs = _synthetic([30, 7, 50, 3, 17])
    ds = WindowDataset.from_documents(docs, seq_len, bos_id=bos, eos_id=eos)
    # doc lengths with bos/eos: 32, 9, 52, 5, 19 -> windows (L-1)//8: 3, 1, 6, 0(dropped), 2
    assert len(ds) == 12
    assert ds.num_dropped == 1
    assert ds.windows.shape == (12, 2)
    for i in range(len(ds)):
        item = ds[i]
        x, y = item["input_ids"], item["targets"]
        assert x.shape == y.shape == item["loss_mask"].shape == (seq_len,)
        assert x.dtype == y.dtype == torch.int64
        assert item["loss_mask"].dtype == torch.bool
        assert bool((x[1:] == y[:-1]).all())  # targets[i] == input_ids[i + 1]
        real = np.concatenate([x.numpy(), y.numpy()])
        real = real[real >= 0]  # drop bos/eos
        assert len(set((real // 1000).tolist())) == 1, f"window {i} mixes documents"


def test_windows_cover_every_target_once():
    seq_len = 4
    docs = _synthetic([21])  # 23 tokens with bos/eos -> 5 windows covering targets 1..20
    ds = WindowDataset.from_documents(docs, seq_len, bos_id=-1, eos_id=-2)
    assert len(ds) == 5
    assert ds.windows[:, 1].tolist() == [0, 4, 8, 12, 16]
    targets = np.concatenate([ds[i]["targets"].numpy() for i in range(len(ds))])
    assert targets.tolist() == list(range(0, 20))
    first = ds[0]["input_ids"].tolist()
    assert first[0] == -1 and first[1:] == [0, 1, 2]


def test_windows_real_specials_and_loss_mask():
    tok = ByteTokenizer()
    docs = [Document("a", tok.encode("abcdefg"))]  # 9 tokens with specials
    ds = WindowDataset.from_documents(docs, 8, tok.bos_id, tok.eos_id, vocab_size=tok.vocab_size)
    item = ds[0]
    assert item["input_ids"][0].item() == tok.bos_id
    assert item["targets"][-1].item() == tok.eos_id
    assert item["loss_mask"].all()
    assert item["loss_mask"].dtype == torch.bool


def test_short_docs_dropped_and_counted(caplog):
    docs = _synthetic([2, 100, 5, 6, 7])  # with bos/eos: 4, 102, 7, 8, 9 tokens; a window needs 9
    with caplog.at_level(logging.INFO):
        ds = WindowDataset.from_documents(docs, seq_len=8, bos_id=-1, eos_id=-2, source="synthetic")
    assert "synthetic" in caplog.text and "3 shorter than 9 tokens dropped" in caplog.text
    assert ds.num_dropped == 3
    assert len(ds) == 101 // 8 + 1
    assert ds[len(ds) - 1]["targets"].tolist() == [4000, 4001, 4002, 4003, 4004, 4005, 4006, -2]


def test_no_document_long_enough_names_source_and_seq_len():
    docs = _synthetic([3, 4])
    with pytest.raises(ValueError, match=r"mysource.*seq_len"):
        WindowDataset.from_documents(docs, seq_len=64, bos_id=-1, eos_id=-2, source="mysource")


def test_token_outside_vocab():
    docs = [Document("bigdoc", np.array([1, 2, 300, 4, 5], dtype=np.int32))]
    with pytest.raises(ValueError, match=r"bigdoc.*300.*vocab_size=258"):
        WindowDataset.from_documents(docs, seq_len=2, bos_id=256, eos_id=257, vocab_size=258)


# --- local sources -----------------------------------------------------------------------


def _write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_txt_source(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes("hello ✓\n".encode() + b"\xff")
    docs = load_documents([str(f)], TOK)
    assert len(docs) == 1
    assert docs[0].name == f.as_posix()
    assert docs[0].tokens.tolist() == list(f.read_bytes())


def test_jsonl_source_with_custom_field(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"body": "one"}\n\n{"body": "two", "x": 1}\n')
    docs = load_documents([str(f)], TOK, text_field="body")
    assert [d.name for d in docs] == [f"{f.as_posix()}:1", f"{f.as_posix()}:3"]
    assert [TOK.decode(d.tokens) for d in docs] == ["one", "two"]


def test_json_list_source(tmp_path):
    f = tmp_path / "d.json"
    f.write_text(json.dumps([{"text": "x"}, {"text": "yy"}]))
    docs = load_documents([str(f)], TOK)
    assert [TOK.decode(d.tokens) for d in docs] == ["x", "yy"]


def test_directory_and_glob_sources(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("b")
    (tmp_path / "sub" / "a.txt").write_text("a")
    _write_jsonl(tmp_path / "sub" / "c.jsonl", [{"text": "c1"}, {"text": "c2"}])
    (tmp_path / "ignored.md").write_text("not loaded")

    docs = load_documents([str(tmp_path)], TOK)
    assert [TOK.decode(d.tokens) for d in docs] == ["b", "a", "c1", "c2"]  # sorted by path

    docs = load_documents([str(tmp_path / "**" / "*.txt")], TOK)
    assert sorted(TOK.decode(d.tokens) for d in docs) == ["a", "b"]

    both = load_documents([str(tmp_path / "b.txt"), str(tmp_path / "sub" / "*.jsonl")], TOK)
    assert [TOK.decode(d.tokens) for d in both] == ["b", "c1", "c2"]


# --- errors ------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_documents([str(tmp_path / "nope.txt")], TOK)


def test_glob_matching_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"\*\.jsonl"):
        load_documents([str(tmp_path / "*.jsonl")], TOK)


def test_empty_file(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("")
    with pytest.raises(ValueError, match="empty.txt"):
        load_documents([str(f)], TOK)


def test_jsonl_without_documents(tmp_path):
    f = tmp_path / "blank.jsonl"
    f.write_text("\n  \n")
    with pytest.raises(ValueError, match="blank.jsonl"):
        load_documents([str(f)], TOK)


def test_empty_directory(tmp_path):
    (tmp_path / "x.md").write_text("x")
    with pytest.raises(ValueError, match=tmp_path.name):
        load_documents([str(tmp_path)], TOK)


def test_invalid_jsonl_line_names_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "ok"}\n{not json}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        load_documents([str(f)], TOK)


def test_jsonl_missing_field_names_file_line_and_field(tmp_path):
    f = tmp_path / "nofield.jsonl"
    _write_jsonl(f, [{"text": "ok"}, {"text": "ok"}, {"content": "x"}])
    with pytest.raises(ValueError, match=r"nofield\.jsonl:3.*'text'"):
        load_documents([str(f)], TOK)


def test_json_missing_field(tmp_path):
    f = tmp_path / "nofield.json"
    f.write_text(json.dumps([{"text": "a"}, {"body": "b"}]))
    with pytest.raises(ValueError, match=r"nofield\.json.*record 1.*'text'"):
        load_documents([str(f)], TOK)


def test_invalid_json_file(tmp_path):
    f = tmp_path / "broken.json"
    f.write_text("[{")
    with pytest.raises(ValueError, match=r"broken\.json"):
        load_documents([str(f)], TOK)


def test_unknown_suffix(tmp_path):
    f = tmp_path / "data.csv"
    f.write_text("a,b")
    with pytest.raises(ValueError, match=r"data\.csv.*\.txt"):
        load_documents([str(f)], TOK)
