"""Source specs -> one streaming ``datasets.IterableDataset`` of records.

A spec is ``stdlib`` (the running interpreter's standard library), a local file, directory or
glob (``.txt``, ``.jsonl``, ``.json``, ``.parquet``), a directory written by ``ttt prepare``
(it holds ``manifest.json``), or ``hf:<repo>[:<config>][@<split>]`` for a Hugging Face hub
dataset streamed with ``load_dataset(..., streaming=True)`` (``<repo>`` may also be a local
directory laid out like a hub repository, e.g. an offline mirror). Local files stream through
``IterableDataset.from_generator`` with one shard per file, so raw files and their prepared
shards split, shuffle and resume identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_ttt.data.corpus import (
    STDLIB,
    TOKENS,
    check_file,
    expand_source,
    file_kind,
    generate_records,
    stdlib_files,
)
from lightning_ttt.data.manifest import MANIFEST, read_manifest
from lightning_ttt.data.scan import ScanReport, check_on_bad_record, scan_files

HUB = "hf:"


@dataclass
class Records:
    """A record stream plus what the pipeline needs to know about it."""

    dataset: object  # datasets.IterableDataset
    text_key: str
    description: str
    manifests: list[tuple[Path, dict]] = field(default_factory=list)  # prepared directories and their manifests
    scan: ScanReport | None = None  # what the up-front check of every local record found (None: not checked)

    @property
    def num_shards(self) -> int:
        return self.dataset.num_shards


def first_record(batch: dict[str, list]) -> dict[str, Any]:
    """``IterableDataset.iter(batch_size=1)`` yields columns of one row; return the row."""
    return {key: values[0] for key, values in batch.items()}


def parse_hub(spec: str) -> tuple[str, str | None, str]:
    """``hf:repo[:config][@split]`` -> (repo, config, split); the split defaults to ``train``."""
    body = spec[len(HUB):]
    body, _, split = body.partition("@")
    repo, _, config = body.partition(":")
    if not repo:
        raise ValueError(f"source {spec!r}: expected hf:<repo>[:<config>][@<split>], e.g. hf:emozilla/pg19@train")
    return repo, config or None, split or "train"


def open_records(sources: Sequence[str], text_field: str = "text", invalid_utf8: str = "error",
                 setting: str = "data.sources", check: bool = True, on_bad_record: str = "error",
                 utf8_text: bool = False, progress: bool | None = None) -> Records:
    """One record stream over ``sources``; with ``check``, every record of the local files is read up
    front (``data.scan``). ``on_bad_record``: ``error`` (a one-line error naming ``file:line``) or
    ``skip`` (bad records counted, then left out of the stream). ``utf8_text``: ``.txt`` files must be
    valid UTF-8 too (a text tokenizer under ``invalid_utf8="error"`` reads them)."""
    if isinstance(sources, str) or not sources:
        raise ValueError(f"{setting} must be a non-empty list of source specs, got {sources!r}")
    check_on_bad_record(on_bad_record)
    description = f"[{', '.join(sources)}]"
    hub = [s for s in sources if s.startswith(HUB)]
    if hub:
        if len(sources) > 1:
            raise ValueError(f"{setting}={description}: a hub source must be the only source "
                             "(prepare several corpora into local shards with `ttt prepare` to mix them)")
        return _open_hub(hub[0], text_field, description)
    return _open_local(sources, text_field, invalid_utf8, description, check, on_bad_record, utf8_text, progress)


def _open_hub(spec: str, text_field: str, description: str) -> Records:
    from datasets import load_dataset

    repo, config, split = parse_hub(spec)
    try:
        ds = load_dataset(repo, config, split=split, streaming=True)
    except Exception as err:  # datasets raises many types (hub, network, missing split)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ValueError(f"source {spec!r}: could not stream {repo!r} split {split!r} ({first})") from None
    columns = ds.column_names
    if columns is not None and text_field not in columns:
        raise ValueError(f"source {spec!r}: no text field {text_field!r} (fields: {', '.join(columns)}); "
                         "set data.text_field")
    if columns is not None and len(columns) > 1:
        ds = ds.select_columns([text_field])
    return Records(ds, text_field, description)


def name_within_source(source: str, path: Path) -> str:
    """A file's document name relative to its source — the directory, the glob's fixed prefix, or the
    file itself — so the hash split does not depend on where the corpus lives."""
    parts = Path(source).expanduser().parts
    fixed = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), None)
    root = Path(*parts[:fixed]) if fixed is not None else Path(source).expanduser()
    if fixed is None and not root.is_dir():
        return path.name
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _open_local(sources: Sequence[str], text_field: str, invalid_utf8: str, description: str, check: bool,
                on_bad_record: str, utf8_text: bool, progress: bool | None) -> Records:
    from datasets import IterableDataset

    paths: list[str] = []
    names: list[str] = []
    kinds: list[str] = []
    manifests: list[tuple[Path, dict]] = []
    for source in sources:
        if source == STDLIB:
            for name, path in stdlib_files():
                paths.append(str(path)), names.append(name), kinds.append("txt")
            continue
        directory = Path(source).expanduser()
        if (directory / MANIFEST).is_file():
            manifest = read_manifest(directory)
            manifests.append((directory, manifest))
            for shard in manifest["shards"]:
                paths.append(str(directory / shard["file"])), names.append(shard["file"]), kinds.append(TOKENS)
            continue
        for path in expand_source(source):
            kind = file_kind(path)
            if check:
                check_file(path, kind, text_field)
            paths.append(str(path)), names.append(name_within_source(source, path)), kinds.append(kind)
    scan = scan_files(paths, names, kinds, text_field, invalid_utf8, on_bad_record, utf8_text, progress) \
        if check else None
    gen_kwargs = {"paths": paths, "names": names, "kinds": kinds, "text_field": text_field,
                  "invalid_utf8": invalid_utf8, "on_bad_record": on_bad_record, "utf8_text": utf8_text}
    dataset = IterableDataset.from_generator(generate_records, gen_kwargs=gen_kwargs)
    return Records(dataset, "text", description, manifests, scan)
