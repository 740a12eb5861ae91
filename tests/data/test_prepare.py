"""``ttt prepare``: token shards + manifest, the same batches as raw files, resumable, checked."""

from __future__ import annotations

import json
from itertools import islice

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import lightning_ttt.data.prepare as prepare_module
from lightning_ttt.cli import main
from lightning_ttt.data import LongContextDataModule, read_manifest
from lightning_ttt.data.prepare import prepare


def _batches(dm: LongContextDataModule, n: int) -> list[dict]:
    dm.setup()
    return list(islice(dm.train_dataloader(), n))


@pytest.mark.parametrize("tokenizer, packing, workers", [("bytes", "document", 2), ("bpe", "concat", 0),
                                                         ("bpe", "document", 2)])
def test_prepared_shards_give_the_same_batches_as_raw_files(corpus, tmp_path, bpe_path, tokenizer, packing, workers):
    tok = str(bpe_path) if tokenizer == "bpe" else "bytes"
    manifest = prepare([str(corpus)], tmp_path / "prep", tokenizer=tok, progress=False)
    assert manifest["complete"] and manifest["num_shards"] == 4 and manifest["dtype"] == "uint16"
    settings = dict(tokenizer=tok, packing=packing, seq_len=32, batch_size=3, val_fraction=0.4,
                    max_val_windows=None, num_workers=workers, shuffle_buffer=16)
    raw = LongContextDataModule(sources=[str(corpus)], **settings)
    prepared = LongContextDataModule(sources=[str(tmp_path / "prep")], **settings)
    for a, b in zip(_batches(raw, 30), _batches(prepared, 30), strict=True):
        for key in ("input_ids", "targets", "loss_mask"):
            assert torch.equal(a[key], b[key])
    assert np.array_equal(raw.validation[0], prepared.validation[0]) and len(raw.validation[0]) > 0


def test_manifest_and_shard_layout(corpus, tmp_path):
    manifest = prepare([str(corpus)], tmp_path / "prep", progress=False)
    assert read_manifest(tmp_path / "prep") == manifest
    assert {k: manifest[k] for k in ("tokenizer", "vocab_size", "bos_id", "eos_id", "text_field")} == {
        "tokenizer": "bytes", "vocab_size": 258, "bos_id": 256, "eos_id": 257, "text_field": "text"}
    first = manifest["shards"][0]
    table = pq.read_table(tmp_path / "prep" / first["file"])
    assert table.column_names == ["name", "tokens"] and table.num_rows == first["num_docs"] == 6
    assert table.schema.field("tokens").type.value_type == pa.uint16()
    text = json.loads((corpus / "part-000.jsonl").read_text().splitlines()[0])["text"]
    assert table.column("tokens")[0].as_py() == list(text.encode())  # document boundaries are the rows
    assert table.column("name")[0].as_py() == "part-000.jsonl:1"  # named within the source directory
    assert sum(s["num_tokens"] for s in manifest["shards"]) == sum(
        len(json.loads(line)["text"].encode()) for f in sorted(corpus.iterdir()) for line in f.read_text().splitlines())


def test_interrupted_preparation_resumes(corpus, tmp_path, monkeypatch):
    out = tmp_path / "prep"
    real = prepare_module._write_shard
    written = []

    def flaky(out_dir, index, docs, dtype, bar):
        if index == 2 and not written.count("failed"):
            written.append("failed")
            next(docs)
            raise KeyboardInterrupt  # killed while writing shard 2
        written.append(index)
        return real(out_dir, index, docs, dtype, bar)

    monkeypatch.setattr(prepare_module, "_write_shard", flaky)
    with pytest.raises(KeyboardInterrupt):
        prepare([str(corpus)], out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.parquet", "shard-00001.parquet"]
    with pytest.raises(ValueError, match=r"preparation incomplete \(2 of 4 shards\); rerun"):
        LongContextDataModule(sources=[str(out)]).setup()
    manifest = prepare([str(corpus)], out, progress=False)
    assert written == [0, 1, "failed", 2, 3]  # shards 0 and 1 were not tokenized again
    assert manifest["complete"] and [s["index"] for s in manifest["shards"]] == [0, 1, 2, 3]


def test_prepare_errors(corpus, tmp_path, bpe_path):
    prepare([str(corpus)], tmp_path / "prep", progress=False)
    with pytest.raises(ValueError, match=r"prep holds a preparation with other settings; pass --overwrite"):
        prepare([str(corpus)], tmp_path / "prep", tokenizer=str(bpe_path), progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(ValueError, match=r"busy exists and is not a `ttt prepare` directory"):
        prepare([str(corpus)], tmp_path / "busy", progress=False)
    dm = LongContextDataModule(sources=[str(tmp_path / "prep")], tokenizer=str(bpe_path))
    with pytest.raises(ValueError, match=r"prep was prepared with tokenizer 'bytes' \(vocab_size 258\) but "
                                         r"data.tokenizer=.*set data.tokenizer to the one it was prepared with"):
        dm.setup()
    prepare([str(corpus)], tmp_path / "prep", tokenizer=str(bpe_path), overwrite=True, progress=False)
    assert read_manifest(tmp_path / "prep")["vocab_size"] < 500


def test_ttt_prepare_command(corpus, tmp_path, capsys):
    assert main(["prepare", str(corpus), "--out", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "4 shards, 24 documents" in out and f"--data.sources '[{tmp_path / 'p'}]'" in out
    assert main(["prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "q")]) == 2
    assert "ttt prepare: error: source" in capsys.readouterr().err
