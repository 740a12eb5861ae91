"""Corpus loading: turn source specs into named, tokenized documents, and split them."""

from __future__ import annotations

import glob
import hashlib
import json
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from lightning_ttt.data.tokenizer import ByteTokenizer

STDLIB = "stdlib"
SUFFIXES = (".txt", ".jsonl", ".json")
_EXCLUDED_DIRS = frozenset({"site-packages", "test", "tests"})
_PROGRESS_MIN_FILES = 50  # show a progress bar only when reading at least this many files


@dataclass(frozen=True)
class Document:
    """One document: a stable name (drives the split) and its token ids, shape [num_tokens]."""

    name: str
    tokens: np.ndarray


def stdlib_files() -> list[tuple[str, Path]]:
    """(name, path) of the interpreter's stdlib ``.py`` files, minus site-packages and tests.

    Names are ``"stdlib/<relative posix path>"``; the list is sorted by relative path.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if _EXCLUDED_DIRS.isdisjoint(rel.parts[:-1]) and path.is_file():
            files.append((rel.as_posix(), path))
    files.sort()
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
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    if not files:
        raise ValueError(f"source {source!r}: directory {str(directory)!r} contains no {'/'.join(SUFFIXES)} files")
    return files


def read_file(path: Path, tokenizer: ByteTokenizer, text_field: str = "text") -> list[Document]:
    """Read one ``.txt`` (one document), ``.jsonl`` (one per line) or ``.json`` (list of records) file."""
    name = path.as_posix()
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{name}: unsupported file type {path.suffix!r}, expected one of {', '.join(SUFFIXES)}")
    data = path.read_bytes()
    if not data:
        raise ValueError(f"{name}: file is empty, expected at least one document")
    if path.suffix == ".txt":
        return [Document(name, tokenizer.encode(data))]
    if path.suffix == ".jsonl":
        docs = [
            Document(f"{name}:{line_no}", tokenizer.encode(_field(record, text_field, f"{name}:{line_no}")))
            for line_no, record in _jsonl_records(data, name)
        ]
        if not docs:
            raise ValueError(f"{name}: no JSON lines found, expected one JSON object per line")
        return docs
    try:
        records = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{name}: invalid JSON ({err})") from None
    if not isinstance(records, list) or not records:
        raise ValueError(f"{name}: expected a non-empty JSON list of objects with field {text_field!r}")
    return [
        Document(f"{name}:{i}", tokenizer.encode(_field(record, text_field, f"{name}: record {i}")))
        for i, record in enumerate(records)
    ]


def _jsonl_records(data: bytes, name: str) -> Iterator[tuple[int, object]]:
    for line_no, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{name}:{line_no}: line {line_no} is not valid JSON ({err})") from None


def _field(record: object, text_field: str, where: str) -> str:
    if not isinstance(record, dict) or text_field not in record:
        raise ValueError(f"{where}: record has no text field {text_field!r} (set text_field to the right key)")
    text = record[text_field]
    if not isinstance(text, str):
        raise ValueError(f"{where}: field {text_field!r} must be a string, got {type(text).__name__}")
    return text


def load_documents(
    sources: Sequence[str],
    tokenizer: ByteTokenizer,
    text_field: str = "text",
    progress: bool = True,
) -> list[Document]:
    """Load every source in order: ``"stdlib"`` or a local file / directory / glob pattern."""
    if isinstance(sources, str) or not sources:
        raise ValueError(f"sources must be a non-empty list of strings, got {sources!r}")
    files: list[tuple[str | None, Path]] = []  # (stdlib name or None for local files, path)
    for source in sources:
        if source == STDLIB:
            found = stdlib_files()
            if not found:
                raise ValueError(f"source 'stdlib': no .py files found under {sysconfig.get_paths()['stdlib']!r}")
            files.extend(found)
        else:
            files.extend((None, path) for path in expand_source(source))

    show = progress and len(files) >= _PROGRESS_MIN_FILES
    docs: list[Document] = []
    for name, path in tqdm(files, desc="Reading corpus", unit="file", disable=not show):
        if name is None:
            docs.extend(read_file(path, tokenizer, text_field))
        else:
            docs.append(Document(name, tokenizer.encode(path.read_bytes())))
    return docs


def is_validation(name: str, val_fraction: float) -> bool:
    """Deterministic split: hash of the document name, identical on every machine and run."""
    return int(hashlib.sha1(name.encode("utf-8")).hexdigest(), 16) % 1000 < val_fraction * 1000


def split_documents(docs: Sequence[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    """Split into (train, validation), each keeping the input order."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    train, val = [], []
    for doc in docs:
        (val if is_validation(doc.name, val_fraction) else train).append(doc)
    return train, val
