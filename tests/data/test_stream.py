"""The training stream: disjoint over ranks and workers, endless, seeded, exactly resumable."""

from __future__ import annotations

from collections import Counter
from itertools import islice

import pytest
import torch
from corpora import write_jsonl_shards
from torch.utils.data import DataLoader

from lightning_ttt.data import ByteTokenizer, StreamSpec, TrainStream, open_records

SEQ = 64


def _stream(records, workers=0, states=None, batches=0, epochs=None, batch_size=3, shuffle=8, seed=0, rank=0,
            world=1, distribute="auto", **spec) -> TrainStream:
    return TrainStream(records, StreamSpec(ByteTokenizer(), SEQ, **spec), batch_size, shuffle, seed, rank, world,
                       workers, states, batches, epochs, distribute)


def _take(stream: TrainStream, n: int | None = None) -> list[dict]:
    loader = DataLoader(stream, batch_size=None, num_workers=stream.num_streams if stream.num_streams > 1 else 0)
    return list(islice(loader, n))


def _rows(batches) -> list[tuple[int, ...]]:
    return [tuple(row.tolist()) for b in batches for row in b["input_ids"]]


@pytest.mark.parametrize("num_files, distribute", [(4, "auto"), (3, "auto"), (6, "shards")],
                         ids=["auto-whole-shards", "auto-every-4th-document", "uneven-shards"])
def test_ranks_and_workers_read_disjoint_windows(tmp_path, num_files, distribute):
    write_jsonl_shards(tmp_path / "c", num_files=num_files, docs_per_file=5)
    records = open_records([str(tmp_path / "c")])
    one = _stream(records, epochs=1, batch_size=1, shuffle=0)
    everything = Counter(_rows(_take(one)))
    assert len(everything) == sum(everything.values()) > 20  # windows are unique in this corpus

    seen: dict[tuple[int, int], set] = {}
    for rank in range(2):
        batches = _take(_stream(records, workers=2, epochs=1, batch_size=1, shuffle=0, rank=rank, world=2,
                                distribute=distribute))
        for b in batches:
            seen.setdefault((rank, b["_state"]["stream"]), set()).update(_rows([b]))
    assert sorted(seen) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # every rank and worker got data
    parts = list(seen.values())
    assert all(not parts[i] & parts[j] for i in range(4) for j in range(i + 1, 4))  # pairwise disjoint
    assert set().union(*parts) == set(everything)  # and together they are the whole epoch


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("packing, tail", [("document", "drop"), ("concat", "drop"), ("document", "pad")])
def test_exact_resume_after_any_batch(tmp_path, workers, packing, tail):
    write_jsonl_shards(tmp_path / "c", num_files=4, docs_per_file=2, words=20)  # ~25-30 windows per epoch
    records = open_records([str(tmp_path / "c")])
    full = _take(_stream(records, workers, packing=packing, tail=tail), 14)  # 42 windows: into the 2nd epoch
    assert len({b["_state"]["epoch"] for b in full}) > 1  # crosses epochs
    for k in (1, 2, 5, 8, 11):
        states = {}
        for b in full[:k]:  # what the DataModule keeps: the last consumed state of each stream
            states[b["_state"]["stream"]] = b["_state"]
        rest = _take(_stream(records, workers, states, batches=k, packing=packing, tail=tail), 14 - k)
        for a, b in zip(full[k:], rest, strict=True):
            for key in ("input_ids", "targets", "loss_mask"):
                assert torch.equal(a[key], b[key]), f"batch after resuming at {k} differs in {key}"


def test_seeded_shuffle(corpus):
    records = open_records([str(corpus)])
    a, b = _rows(_take(_stream(records, seed=0), 6)), _rows(_take(_stream(records, seed=0), 6))
    c = _rows(_take(_stream(records, seed=1), 6))
    plain = _rows(_take(_stream(records, shuffle=0), 6))
    assert a == b and a != c and a != plain


def test_stream_repeats_with_a_new_shard_order(corpus):
    records = open_records([str(corpus)])
    epoch = _rows(_take(_stream(records, epochs=1, batch_size=1, shuffle=0)))
    two = _rows(_take(_stream(records, batch_size=1, shuffle=0), 2 * len(epoch)))
    assert two[:len(epoch)] == epoch
    assert sorted(two[len(epoch):]) == sorted(epoch) and two[len(epoch):] != epoch


def test_a_stream_without_windows_names_rank_worker_and_sources(tmp_path):
    write_jsonl_shards(tmp_path / "one", num_files=1, docs_per_file=1)
    records = open_records([str(tmp_path / "one")])
    # batches=1 makes the main process run logical stream 1 of 2, which gets no document here
    with pytest.raises(ValueError, match=r"rank 0, data stream 1 of 2: no training window of seq_len \+ 1 = 65 "
                                         r"tokens .*one\].*0 documents read"):
        next(iter(_stream(records, workers=2, batches=1)))
    with pytest.raises(ValueError, match=r"1 documents read, 0 shorter than data.min_doc_tokens, 1 shorter than a "
                                         r"window"):
        next(iter(TrainStream(records, StreamSpec(ByteTokenizer(), 4096), 2)))


def test_shards_strategy_needs_a_shard_per_stream(tmp_path):
    write_jsonl_shards(tmp_path / "c", num_files=3, docs_per_file=2)
    with pytest.raises(ValueError, match=r"data.distribute='shards' needs at least one shard per stream: .* has 3 "
                                         r"shards for 4 streams"):
        _stream(open_records([str(tmp_path / "c")]), workers=2, world=2, distribute="shards")
