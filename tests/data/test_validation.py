"""Validation windows: a seeded selection spread over every held-out document, the same on every call."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
from corpora import doc_text, write_jsonl_shards

from lightning_ttt.data import LongContextDataModule
from lightning_ttt.data.sources import open_records
from lightning_ttt.data.stream import StreamSpec
from lightning_ttt.data.tokenizer import load_tokenizer
from lightning_ttt.data.validation import collect_windows, first_windows, scored_tokens

SEQ_LEN = 64


def window_doc(window: np.ndarray) -> int:
    """The document a window of ``doc_text`` words comes from (every word carries ``<doc>.<word>:``)."""
    text = bytes(window[window < 256].astype(np.uint8).tolist())
    return Counter(int(m) for m in re.findall(rb"(?<![\d.])(\d+)\.\d+:", text)).most_common(1)[0][0]


def windows_of(root, limit, seed=0):
    spec = StreamSpec(load_tokenizer("bytes"), SEQ_LEN)
    return collect_windows(open_records([str(root)]), spec, limit, seed)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """30 documents of ~11 windows each, in 3 files."""
    root = tmp_path_factory.mktemp("held_out")
    write_jsonl_shards(root, num_files=3, docs_per_file=10)
    return root


def test_windows_come_from_as_many_documents_as_the_limit_allows(held_out):
    found = windows_of(held_out, limit=12)
    docs = [window_doc(w) for w in found.windows]
    assert len(found.windows) == 12 and len(set(docs)) == 12 == found.documents
    assert max(docs) >= 20 and set(docs) != set(range(12))  # not the first documents in stream order
    assert found.documents_read == 30
    assert found.tokens == scored_tokens(found.windows, found.valid, 256) == 12 * SEQ_LEN
    assert "from 12 of 30 documents" in found.summary


def test_selection_is_seeded_and_deterministic(held_out):
    first, again, other = windows_of(held_out, 12), windows_of(held_out, 12), windows_of(held_out, 12, seed=1)
    assert np.array_equal(first.windows, again.windows) and np.array_equal(first.valid, again.valid)
    assert not np.array_equal(first.windows, other.windows)


def test_few_documents_share_the_limit_evenly_and_every_prefix_spans_them(tmp_path):
    write_jsonl_shards(tmp_path, num_files=1, docs_per_file=3)
    found = windows_of(tmp_path, limit=10)
    docs = [window_doc(w) for w in found.windows]
    assert sorted(Counter(docs).values()) == [3, 3, 4]
    assert len(set(docs[:3])) == 3  # the first round takes one window of each document
    assert len({w.tobytes() for w in found.windows}) == 10  # no window twice


def test_all_windows_in_stream_order_when_they_fit(tmp_path):
    (tmp_path / "a.txt").write_text(doc_text(1) * 2)
    found = windows_of(tmp_path, limit=1000)
    assert len(found.windows) == (len(doc_text(1) * 2) + 2 - 1) // SEQ_LEN
    assert bytes(found.windows[0, 1:9].astype(np.uint8).tolist()) == doc_text(1)[:8].encode()
    assert np.array_equal(found.windows, windows_of(tmp_path, limit=None).windows)


def test_first_windows_stops_after_the_first(held_out):
    probe = first_windows(open_records([str(held_out)]), StreamSpec(load_tokenizer("bytes"), SEQ_LEN))
    assert len(probe.windows) == 1 and probe.documents_read == 1 and window_doc(probe.windows[0]) == 0


def test_datamodule_reports_its_validation_coverage(held_out, tmp_path):
    write_jsonl_shards(tmp_path / "train", num_files=1, docs_per_file=4, start=100)
    dm = LongContextDataModule(sources=[str(tmp_path / "train")], val_sources=[str(held_out)], seq_len=SEQ_LEN,
                               batch_size=4, max_val_windows=12)
    dm.setup("validate")
    assert dm.validation_coverage == {"windows": 12, "documents": 12, "tokens": 12 * SEQ_LEN}
    assert np.array_equal(dm.validation[0], windows_of(held_out, 12).windows)
