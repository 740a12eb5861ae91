"""data.on_bad_record: every local record is read before training; bad ones stop the run there
(``error``, naming file:line) or are counted and left out (``skip``)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lightning_ttt.data import LongContextDataModule, open_records
from lightning_ttt.data.scan import scan_files
from lightning_ttt.data.sources import first_record


def _write_corpus(tmp_path):
    """Three files, 12 records, 6 of them bad: a bad JSON line, a missing field, non-string fields,
    invalid UTF-8, a null parquet value."""
    good = "".join(json.dumps({"text": f"document {i} " * 20}) + "\n" for i in range(3))
    (tmp_path / "a.jsonl").write_bytes((good + "{not json}\n" + json.dumps({"body": "x"}) + "\n").encode()
                                       + b'{"text": "bad \xff byte"}\n' + json.dumps({"text": 7}).encode() + b"\n")
    pq.write_table(pa.table({"text": ["parquet one " * 20, None, "parquet two " * 20]}), tmp_path / "b.parquet")
    (tmp_path / "c.json").write_text(json.dumps([{"text": "json one " * 20}, {"text": ["list"]}]))
    return tmp_path


def _names(records):
    return [first_record(b)["name"] for b in records.dataset.iter(batch_size=1)]


def test_error_names_the_first_bad_record_before_any_is_streamed(tmp_path):
    corpus = _write_corpus(tmp_path)
    with pytest.raises(ValueError) as err:
        open_records([str(corpus)])
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("a.jsonl:4: line 4 is not valid JSON")  # file:line of the first bad one
    assert "3 more bad records in this file" in message and "data.on_bad_record=skip" in message


def test_skip_counts_bad_records_and_streams_only_good_ones(tmp_path):
    corpus = _write_corpus(tmp_path)
    records = open_records([str(corpus)], on_bad_record="skip")
    scan = records.scan
    assert (scan.files, scan.records, scan.bad) == (3, 6, 6)
    assert scan.bad_files == {"a.jsonl": 4, "b.parquet": 1, "c.json": 1}
    assert [str(b).split(":")[:2] for b in scan.first_bad] == [["a.jsonl", "4"], ["a.jsonl", "5"], ["a.jsonl", "6"]]
    assert "6 bad records in 3 of 3 files skipped" in scan.summary()
    assert _names(records) == ["a.jsonl:1", "a.jsonl:2", "a.jsonl:3", "b.parquet:0", "b.parquet:2", "c.json:0"]


def test_a_file_without_any_good_record_is_an_error_in_both_modes(tmp_path):
    (tmp_path / "bad.jsonl").write_text("{not json}\n[1]\n")
    for mode in ("error", "skip"):
        with pytest.raises(ValueError, match=r"bad\.jsonl"):
            open_records([str(tmp_path / "bad.jsonl")], on_bad_record=mode)
    with pytest.raises(ValueError, match=r"bad\.jsonl: no usable record \(all 2 bad, the first bad\.jsonl:1: "):
        open_records([str(tmp_path / "bad.jsonl")], on_bad_record="skip")


def test_txt_files_are_checked_for_utf8_only_for_a_text_tokenizer(tmp_path):
    (tmp_path / "ok.txt").write_text("fine text")
    (tmp_path / "raw.txt").write_bytes(b"bytes \xff kept")
    assert len(_names(open_records([str(tmp_path)]))) == 2  # the byte tokenizer keeps any bytes
    with pytest.raises(ValueError, match=r"^raw\.txt: invalid UTF-8 at byte offset 6 "):
        open_records([str(tmp_path)], utf8_text=True)
    assert _names(open_records([str(tmp_path)], utf8_text=True, on_bad_record="skip")) == ["ok.txt"]


def test_unknown_mode_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match=r"^data\.on_bad_record='ignore' is unknown; expected one of error, skip$"):
        open_records(["stdlib"], on_bad_record="ignore")
    with pytest.raises(ValueError, match=r"^data\.on_bad_record='ignore'"):
        LongContextDataModule(on_bad_record="ignore")


def test_progress_bar_counts_the_bytes_read(tmp_path, capsys):
    corpus = _write_corpus(tmp_path)
    scan_files([str(corpus / "b.parquet")], ["b.parquet"], ["parquet"], "text", "error", "skip", progress=True)
    assert "checking data files" in capsys.readouterr().err


def test_datamodule_skip_trains_past_bad_records_and_warns(tmp_path):
    corpus = _write_corpus(tmp_path)
    dm = LongContextDataModule(sources=[str(corpus)], seq_len=32, batch_size=2, val_fraction=0.0,
                               shuffle_buffer=0, on_bad_record="skip")
    with pytest.warns(UserWarning, match=r"data\.sources: 6 bad records in 3 of 3 files skipped"):
        dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (2, 32)
    strict = LongContextDataModule(sources=[str(corpus)], seq_len=32, batch_size=2, val_fraction=0.0)
    with pytest.raises(ValueError, match=r"^a\.jsonl:4: "):
        strict.setup("fit")


def test_prepare_skips_bad_records_when_asked(tmp_path, capsys):
    from lightning_ttt.cli import main

    (tmp_path / "corpus").mkdir()
    corpus = _write_corpus(tmp_path / "corpus")
    out = tmp_path / "prepared"
    assert main(["prepare", str(corpus), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().startswith("ttt prepare: error: a.jsonl:4: ")
    assert not out.exists()  # refused before anything was written
    assert main(["prepare", str(corpus), "--out", str(out), "--on-bad-record", "skip"]) == 0
    assert "6 bad records in 3 of 3 files skipped" in capsys.readouterr().err
    assert sum(s["num_docs"] for s in json.loads((out / "manifest.json").read_text())["shards"]) == 6
