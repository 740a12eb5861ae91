"""Local corpora: find files (the stdlib, paths, directories, globs) and read them as records.

A record is ``{"name": str, "text": str | bytes}`` (``.txt`` files give their raw bytes, so the
byte tokenizer can keep invalid UTF-8) or, for shards written by ``ttt prepare``,
``{"name": str, "tokens": ndarray}``. Names are ``<path>`` for ``.txt``, ``<path>:<line>`` for
``.jsonl`` (1-based), ``<path>:<index>`` for ``.json`` lists and ``<path>:<row>`` for ``.parquet``.
"""

from __future__ import annotations

import glob
import json
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lightning_ttt.data.tokenizer import to_text

STDLIB = "stdlib"
KINDS = {".txt": "txt", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}
TOKENS = "tokens"  # kind of a prepared token shard
_EXCLUDED_DIRS = frozenset({"site-packages", "test", "tests"})
_PARQUET_BATCH = 64  # rows per record batch when streaming parquet files


def stdlib_files() -> list[tuple[str, Path]]:
    """(name, path) of the interpreter's stdlib ``.py`` files, minus site-packages and tests.

    Names are ``"stdlib/<relative posix path>"``; the list is sorted by relative path.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for directory, subdirs, filenames in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in _EXCLUDED_DIRS]  # prune while walking
        for filename in filenames:
            path = Path(directory, filename)
            if filename.endswith(".py") and path.is_file():
                files.append((path.relative_to(root).as_posix(), path))
    files.sort()
    if not files:
        raise ValueError(f"source 'stdlib': no .py files found under {str(root)!r}")
    return [(f"{STDLIB}/{rel}", path) for rel, path in files]


def expand_source(source: str) -> list[Path]:
    """Resolve one local source (file, directory or glob pattern) to a sorted list of files."""
    if any(c in source for c in "*?["):  # glob pattern
        matches = sorted(Path(p) for p in glob.glob(str(Path(source).expanduser()), recursive=True))
        if not matches:
            raise FileNotFoundError(f"source {source!r}: glob pattern matched no files")
        files = []
        for match in matches:
            files.extend(_files_in_dir(match, source) if match.is_dir() else [match])
        return files
    path = Path(source).expanduser()
    if path.is_dir():
        return _files_in_dir(path, source)
    if not path.exists():
        raise FileNotFoundError(f"source {source!r}: no such file or directory")
    return [path]


def _files_in_dir(directory: Path, source: str) -> list[Path]:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix in KINDS)
    if not files:
        raise ValueError(f"source {source!r}: directory {str(directory)!r} contains no {'/'.join(KINDS)} files")
    return files


def file_kind(path: Path) -> str:
    if path.suffix not in KINDS:
        raise ValueError(f"{path.as_posix()}: unsupported file type {path.suffix!r}, "
                         f"expected one of {', '.join(KINDS)}")
    return KINDS[path.suffix]


def check_file(path: Path, kind: str, text_field: str) -> None:
    """Fail early, in one line, on an empty file or a parquet file without the text field (the records
    themselves are checked by ``data.scan.scan_files``)."""
    name = path.as_posix()
    if path.stat().st_size == 0:
        raise ValueError(f"{name}: file is empty, expected at least one document")
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            columns = pq.read_schema(path).names
        except Exception as err:  # pyarrow raises ArrowInvalid (a ValueError) or OSError for a damaged file
            raise ValueError(f"{name}: not a readable parquet file ({_first_line(err)})") from None
        if text_field not in columns:
            raise ValueError(f"{name}: parquet file has no text field {text_field!r} (columns: {', '.join(columns)}; "
                             "set data.text_field)")


@dataclass(frozen=True)
class BadRecord:
    """A record that cannot be used: where it is (``file:line``) and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def generate_records(paths: list[str], names: list[str], kinds: list[str], text_field: str,
                     invalid_utf8: str, on_bad_record: str = "error", utf8_text: bool = False) -> Iterator[dict]:
    """Records of the given files in order: the generator behind the ``datasets`` stream (one shard per file)."""
    for path, name, kind in zip(paths, names, kinds, strict=True):
        yield from read_file(path, name, kind, text_field, invalid_utf8, on_bad_record, utf8_text)


def read_file(path: str, name: str, kind: str, text_field: str, invalid_utf8: str, on_bad_record: str = "error",
              utf8_text: bool = False) -> Iterator[dict]:
    """Records of one file; ``name`` prefixes each record's name. A bad record raises a one-line
    ``ValueError`` (``on_bad_record="error"``) or is left out (``"skip"``)."""
    for record in scan_file(path, name, kind, text_field, invalid_utf8, utf8_text):
        if isinstance(record, BadRecord):
            if on_bad_record == "skip":
                continue
            raise ValueError(str(record))
        yield record


def scan_file(path: str, name: str, kind: str, text_field: str, invalid_utf8: str,
              utf8_text: bool = False) -> Iterator[dict | BadRecord]:
    """Every record of one file, or a ``BadRecord`` in its place; a problem with the whole file (not
    JSON, not parquet) raises a one-line ``ValueError``. ``utf8_text``: a ``.txt`` file must be valid
    UTF-8 under ``invalid_utf8="error"`` (a text tokenizer will decode it)."""
    if kind == "txt":  # empty user files were rejected by check_file; empty stdlib files are short documents
        data = Path(path).read_bytes()
        if utf8_text and invalid_utf8 == "error" and (bad := _bad_utf8_offset(data)) is not None:
            yield BadRecord(name, f"invalid UTF-8 at byte offset {bad} {_UTF8_HINT}")
        else:
            yield {"name": name, "text": data}
    elif kind == "jsonl":
        yield from _read_jsonl(path, name, text_field, invalid_utf8)
    elif kind == "json":
        yield from _read_json(path, name, text_field, invalid_utf8)
    elif kind == "parquet":
        yield from _read_parquet(path, name, text_field)
    elif kind == TOKENS:
        yield from _read_tokens(path)
    else:
        raise ValueError(f"{name}: unknown record kind {kind!r}")


def _read_jsonl(path: str, name: str, text_field: str, invalid_utf8: str) -> Iterator[dict | BadRecord]:
    found = False
    offset = 0
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            where = f"{name}:{line_no}"
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            found = True
            if invalid_utf8 == "error" and (bad := _bad_utf8_offset(line)) is not None:
                yield BadRecord(where, f"invalid UTF-8 at byte offset {start + bad} of the file {_UTF8_HINT}")
                continue
            try:
                record = json.loads(to_text(line, where, invalid_utf8))
            except json.JSONDecodeError as err:
                yield BadRecord(where, f"line {line_no} is not valid JSON ({err})")
                continue
            yield _field(record, text_field, where, where)
    if not found:
        raise ValueError(f"{name}: no JSON lines found, expected one JSON object per line")


_UTF8_HINT = "(data.invalid_utf8='error'; set it to 'replace' to substitute U+FFFD)"


def _bad_utf8_offset(data: bytes) -> int | None:
    """Offset of the first invalid UTF-8 byte of ``data``, or None when it decodes."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start
    return None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def _read_json(path: str, name: str, text_field: str, invalid_utf8: str) -> Iterator[dict | BadRecord]:
    try:
        records = json.loads(to_text(Path(path).read_bytes(), name, invalid_utf8))
    except json.JSONDecodeError as err:
        raise ValueError(f"{name}: invalid JSON ({err})") from None
    if not isinstance(records, list) or not records:
        raise ValueError(f"{name}: expected a non-empty JSON list of objects with field {text_field!r}")
    for i, record in enumerate(records):
        yield _field(record, text_field, f"{name}:{i}", f"{name}: record {i}")


def _read_parquet(path: str, name: str, text_field: str) -> Iterator[dict | BadRecord]:
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    if text_field not in file.schema_arrow.names:
        raise ValueError(f"{name}: parquet file has no text field {text_field!r} (set data.text_field)")
    row = 0
    for batch in file.iter_batches(batch_size=_PARQUET_BATCH, columns=[text_field]):
        for text in batch.column(0).to_pylist():
            where = f"{name}:{row}"
            yield _field({text_field: text}, text_field, where, where)
            row += 1


def _read_tokens(path: str) -> Iterator[dict]:
    """A prepared shard: parquet rows ``name`` (string) and ``tokens`` (list of uint16/uint32)."""
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=_PARQUET_BATCH, columns=["name", "tokens"]):
        names = batch.column(0).to_pylist()
        tokens = batch.column(1)
        offsets = tokens.offsets.to_numpy()  # [rows + 1], document boundaries in `values`
        values = tokens.values.to_numpy(zero_copy_only=False)
        for i, doc in enumerate(names):
            yield {"name": doc, "tokens": values[offsets[i]:offsets[i + 1]]}


def _field(record: object, text_field: str, name: str, where: str) -> dict | BadRecord:
    """The record ``{"name": name, "text": ...}``, or a ``BadRecord`` located at ``where``."""
    if not isinstance(record, dict) or text_field not in record:
        return BadRecord(where, f"record has no text field {text_field!r} (set data.text_field to the right key)")
    text = record[text_field]
    if not isinstance(text, str):
        return BadRecord(where, f"field {text_field!r} must be a string, got {type(text).__name__}")
    return {"name": name, "text": text}
