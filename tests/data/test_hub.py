"""Hub datasets (``hf:``) through ``load_dataset(..., streaming=True)``, offline on a local mirror.

A directory laid out like a hub repository (``data/<split>-0000i-of-0000n.parquet``) takes the
same code path as ``hf:emozilla/pg19``; with HF_HUB_OFFLINE=1 nothing touches the network.
"""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from corpora import doc_text

from lightning_ttt.data import ByteTokenizer, LongContextDataModule, StreamSpec, TrainStream, open_records
from lightning_ttt.data.prepare import prepare
from lightning_ttt.data.sources import parse_hub


@pytest.fixture()
def mirror(tmp_path) -> Path:
    """A PG-19-like repository: 2 train parquet shards x 5 books, 1 validation shard x 3 books."""
    data = tmp_path / "pg19" / "data"
    data.mkdir(parents=True)
    for i in range(2):
        books = [doc_text(10 * i + j, words=80) for j in range(5)]
        pq.write_table(pa.table({"short_book_title": [f"b{i}{j}" for j in range(5)], "text": books}),
                       data / f"train-0000{i}-of-00002.parquet")
    pq.write_table(pa.table({"short_book_title": ["v0", "v1", "v2"], "text": [doc_text(900 + j) for j in range(3)]}),
                   data / "validation-00000-of-00001.parquet")
    return tmp_path / "pg19"


def test_parse_hub_specs():
    assert parse_hub("hf:emozilla/pg19") == ("emozilla/pg19", None, "train")
    assert parse_hub("hf:emozilla/pg19@validation") == ("emozilla/pg19", None, "validation")
    assert parse_hub("hf:org/name:config@test") == ("org/name", "config", "test")
    with pytest.raises(ValueError, match="expected hf:<repo>"):
        parse_hub("hf:@train")


def test_hub_mirror_trains_with_its_validation_split(mirror):
    dm = LongContextDataModule(sources=[f"hf:{mirror}@train"], val_sources=[f"hf:{mirror}@validation"], seq_len=64,
                               batch_size=2, max_val_windows=None, num_workers=2)
    dm.setup()
    assert dm.train_records.num_shards == 2 and dm.train_records.text_key == "text"
    val_text = bytes(dm.validation[0][0, 1:].astype("uint8").tolist())
    assert val_text == doc_text(900).encode()[:64]
    streams = {b["_state"]["stream"] for b in islice(dm.train_dataloader(), 6)}
    assert streams == {0, 1}  # two workers, one shard each


def test_prepared_hub_split_matches_streaming(mirror, tmp_path):
    manifest = prepare([f"hf:{mirror}@train"], tmp_path / "prep", progress=False)
    assert manifest["num_shards"] == 2 and manifest["shards"][0]["num_docs"] == 5
    assert all(name.startswith("sha1:") for name in pq.read_table(tmp_path / "prep" / "shard-00000.parquet")["name"]
               .to_pylist())  # unnamed hub records keep their content-hash key
    settings = dict(seq_len=64, batch_size=2, val_fraction=0.3, max_val_windows=None, num_workers=2)
    hub = LongContextDataModule(sources=[f"hf:{mirror}@train"], **settings)
    local = LongContextDataModule(sources=[str(tmp_path / "prep")], **settings)
    for dm in (hub, local):
        dm.setup()
    for a, b in zip(islice(hub.train_dataloader(), 20), islice(local.train_dataloader(), 20), strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["loss_mask"], b["loss_mask"])


def test_hub_errors_are_one_line(mirror, tmp_path):
    with pytest.raises(ValueError, match=r"no text field 'body' \(fields: short_book_title, text\); set "
                                         r"data.text_field"):
        open_records([f"hf:{mirror}"], text_field="body")
    with pytest.raises(ValueError, match=r"could not stream .* split 'test' \(Bad split: test"):
        open_records([f"hf:{mirror}@test"])
    with pytest.raises(ValueError, match=r"source 'hf:no-such-org/no-such-dataset': could not stream"):
        open_records(["hf:no-such-org/no-such-dataset"])  # offline in tests: fails at once
    with pytest.raises(ValueError, match=r"a hub source must be the only source"):
        open_records([f"hf:{mirror}", "stdlib"])


def test_jsonl_mirror_uses_the_same_path(tmp_path):
    (tmp_path / "repo").mkdir()
    for split, n in (("train", 4), ("validation", 2)):
        rows = [{"text": doc_text(i, words=40)} for i in range(n)]
        (tmp_path / "repo" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = LongContextDataModule(sources=[f"hf:{tmp_path / 'repo'}"], val_sources=[f"hf:{tmp_path / 'repo'}@validation"],
                               seq_len=32, batch_size=2)
    dm.setup()
    assert next(iter(dm.train_dataloader()))["input_ids"].shape == (2, 32)


def test_hub_stream_resumes_exactly_from_a_saved_state(mirror, tmp_path):
    records = open_records([f"hf:{mirror}@train"])
    spec = StreamSpec(ByteTokenizer(), 64)
    full = list(islice(TrainStream(records, spec, batch_size=2, shuffle_buffer=8), 12))
    k = 5
    torch.save({b["_state"]["stream"]: b["_state"] for b in full[:k]}, tmp_path / "state.pt")
    states = torch.load(tmp_path / "state.pt", weights_only=True)  # checkpoint-safe types only
    rest = list(islice(TrainStream(records, spec, batch_size=2, shuffle_buffer=8, states=states, batches=k), 12 - k))
    for a, b in zip(full[k:], rest, strict=True):
        assert torch.equal(a["input_ids"], b["input_ids"])
