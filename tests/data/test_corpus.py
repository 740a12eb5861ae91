"""Local sources through the streaming path: discovery, names, file kinds and one-line errors."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lightning_ttt.data import open_records
from lightning_ttt.data.corpus import stdlib_files
from lightning_ttt.data.sources import first_record


def records(sources, **kwargs) -> list[dict]:
    recs = open_records([str(s) for s in sources], **kwargs)
    return [first_record(batch) for batch in recs.dataset.iter(batch_size=1)]


def texts(sources, **kwargs) -> list[str]:
    return [r["text"].decode() if isinstance(r["text"], bytes) else r["text"] for r in records(sources, **kwargs)]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_stdlib_files_filtered_and_sorted():
    files = stdlib_files()
    names = [name for name, _ in files]
    assert len(names) > 100 and names == sorted(names) and len(set(names)) == len(names)
    assert "stdlib/json/decoder.py" in names
    assert not any({"site-packages", "test", "tests"} & set(n.split("/")[1:-1]) for n in names)
    recs = open_records(["stdlib"])
    assert recs.num_shards == len(files)  # one shard per file


def test_txt_keeps_raw_bytes(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes("hello ✓\n".encode() + b"\xff")
    (rec,) = records([f])
    assert rec == {"name": "a.txt", "text": f.read_bytes()}  # named within its source: location-independent


def test_jsonl_json_parquet_names_and_fields(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"body": "one"}\n\n{"body": "two", "x": 1}\n')
    (tmp_path / "e.json").write_text(json.dumps([{"body": "x"}, {"body": "yy"}]))
    pq.write_table(pa.table({"body": ["p0", "p1"], "other": [1, 2]}), tmp_path / "f.parquet")
    recs = records([tmp_path], text_field="body")
    assert [r["name"] for r in recs] == ["d.jsonl:1", "d.jsonl:3", "e.json:0",
                                         "e.json:1", "f.parquet:0", "f.parquet:1"]  # relative to the source
    assert [r["text"] for r in recs] == ["one", "two", "x", "yy", "p0", "p1"]


def test_directory_and_glob_sources(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("b")
    (tmp_path / "sub" / "a.txt").write_text("a")
    _jsonl(tmp_path / "sub" / "c.jsonl", [{"text": "c1"}, {"text": "c2"}])
    (tmp_path / "ignored.md").write_text("not loaded")
    assert texts([tmp_path]) == ["b", "a", "c1", "c2"]  # sorted by path
    assert sorted(texts([tmp_path / "**" / "*.txt"])) == ["a", "b"]
    assert texts([tmp_path / "b.txt", tmp_path / "sub" / "*.jsonl"]) == ["b", "c1", "c2"]
    assert open_records([str(tmp_path)]).num_shards == 3
    names = [r["name"] for r in records([tmp_path / "**" / "*.txt"])]
    assert sorted(names) == ["b.txt", "sub/a.txt"]  # relative to the glob's fixed prefix


@pytest.mark.parametrize("name, write, pattern", [
    ("nope.txt", None, r"nope\.txt': no such file"),
    ("empty.txt", lambda p: p.write_text(""), r"empty\.txt: file is empty"),
    ("blank.jsonl", lambda p: p.write_text("\n  \n"), r"blank\.jsonl: no JSON lines"),
    ("x.csv", lambda p: p.write_text("a,b"), r"x\.csv: unsupported file type '\.csv'"),
    ("broken.json", lambda p: p.write_text("[{"), r"broken\.json: invalid JSON"),
    ("nofield.jsonl", lambda p: _jsonl(p, [{"content": "x"}]), r"nofield\.jsonl:1: record has no text field 'text'"),
    ("t.parquet", lambda p: pq.write_table(pa.table({"body": ["x"]}), p),
     r"t\.parquet: parquet file has no text field 'text' \(columns: body"),
])
def test_bad_files_fail_at_open_with_one_line(tmp_path, name, write, pattern):
    if write is not None:
        write(tmp_path / name)
    with pytest.raises((ValueError, FileNotFoundError), match=pattern) as err:
        open_records([str(tmp_path / name)])
    assert "\n" not in str(err.value)


def test_errors_later_in_a_file_name_file_and_line(tmp_path):
    _jsonl(tmp_path / "late.jsonl", [{"text": "ok"}, {"text": "ok"}, {"content": "x"}])
    with pytest.raises(ValueError, match=r"late\.jsonl:3: record has no text field 'text'"):
        records([tmp_path / "late.jsonl"])
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: line 2 is not valid JSON"):
        records([tmp_path / "bad.jsonl"])
    (tmp_path / "nofield.json").write_text(json.dumps([{"text": "a"}, {"body": "b"}]))
    with pytest.raises(ValueError, match=r"nofield\.json: record 1: record has no text field 'text'"):
        records([tmp_path / "nofield.json"])


def test_glob_matching_nothing_and_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"\*\.jsonl.*matched no files"):
        open_records([str(tmp_path / "*.jsonl")])
    (tmp_path / "x.md").write_text("x")
    with pytest.raises(ValueError, match=f"{tmp_path.name}.*contains no"):
        open_records([str(tmp_path)])


def test_invalid_utf8_in_jsonl_names_file_line_and_offset(tmp_path):
    f = tmp_path / "u.jsonl"
    data = b'{"text": "fine"}\n{"text": "bad \xff byte"}\n'
    f.write_bytes(data)
    offset = data.index(b"\xff")  # 31
    with pytest.raises(ValueError, match=rf"u\.jsonl:2: invalid UTF-8 at byte offset {offset} of the file"):
        records([f])
    assert texts([f], invalid_utf8="replace") == ["fine", "bad \ufffd byte"]


def test_source_list_validated():
    with pytest.raises(ValueError, match="data.sources must be a non-empty list"):
        open_records([])
    with pytest.raises(ValueError, match="data.sources must be a non-empty list"):
        open_records("stdlib")
