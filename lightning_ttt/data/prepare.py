"""``ttt prepare``: tokenize sources once into parquet token shards plus a manifest.

Input shard ``i`` (a local file, or shard ``i`` of a hub dataset) becomes
``shard-0000i.parquet`` with one row per document: ``name`` (the key that decides the
train/validation split) and ``tokens`` (``uint16`` when the vocabulary fits, else ``uint32``;
rows are the document boundaries). ``manifest.json`` records the tokenizer (spec, fingerprint,
vocabulary size, BOS/EOS), the sources and, per shard, its document and token counts. Because
shards mirror the input shards one to one, training on the directory gives the same batches
as training on the raw sources. Shards are written atomically and the manifest after each one,
so rerunning an interrupted command continues where it stopped.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from lightning_ttt.data.documents import DocumentReader
from lightning_ttt.data.manifest import FORMAT, MANIFEST
from lightning_ttt.data.sources import first_record, open_records
from lightning_ttt.data.tokenizer import ByteTokenizer, load_tokenizer
from lightning_ttt.io import atomic_write_json

_ROWS_PER_WRITE = 64  # documents buffered before a parquet row group is written


def prepare(sources: Sequence[str], out: str | Path, tokenizer: str = "bytes", text_field: str = "text",
            bos_token: str | None = None, eos_token: str | None = None, invalid_utf8: str = "error",
            overwrite: bool = False, progress: bool = True, on_bad_record: str = "error") -> dict:
    """Tokenize ``sources`` into ``out``; returns the finished manifest."""
    from tqdm.auto import tqdm

    tok = load_tokenizer(tokenizer, bos_token, eos_token, invalid_utf8)
    records = open_records(list(sources), text_field, invalid_utf8, setting="sources", on_bad_record=on_bad_record,
                           utf8_text=not isinstance(tok, ByteTokenizer), progress=None if progress else False)
    if records.scan is not None and records.scan.bad:
        print(f"ttt prepare: {records.scan.summary()}", file=sys.stderr)
    out = Path(out)
    settings = {
        "format": FORMAT, "sources": list(sources), "text_field": text_field, "invalid_utf8": invalid_utf8,
        "tokenizer": tokenizer, "tokenizer_fingerprint": tok.fingerprint, "vocab_size": tok.vocab_size,
        "bos_id": tok.bos_id, "eos_id": tok.eos_id, "dtype": "uint16" if tok.vocab_size <= 2**16 else "uint32",
        "num_shards": records.num_shards,
    }
    manifest = _start(out, settings, overwrite)
    done = {shard["index"] for shard in manifest["shards"]}
    reader = DocumentReader(tok, records.text_key)
    bar = tqdm(desc="ttt prepare", unit="doc", disable=not progress, dynamic_ncols=True,
               bar_format="{desc}{n_fmt} documents [{elapsed}, {rate_fmt}{postfix}]")
    for index in range(records.num_shards):
        if index in done:
            continue
        bar.set_description(f"ttt prepare [shard {index + 1}/{records.num_shards}]", refresh=False)
        shard = records.dataset.shard(num_shards=records.num_shards, index=index, contiguous=True)
        docs = (reader(first_record(batch)) for batch in shard.iter(batch_size=1))  # split 'all': never None
        entry = _write_shard(out, index, docs, settings["dtype"], bar)
        manifest["shards"].append(entry)
        atomic_write_json(out / MANIFEST, manifest)
        bar.set_postfix(tokens=f"{sum(s['num_tokens'] for s in manifest['shards']):,}", refresh=False)
    bar.close()
    manifest["complete"] = True
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def _start(out: Path, settings: dict, overwrite: bool) -> dict:
    """A fresh manifest, or the existing one when it was started with the same settings."""
    path = out / MANIFEST
    if path.is_file():
        existing = json.loads(path.read_text())
        if not overwrite:
            same = {k: existing.get(k) for k in settings} == settings
            if not same:
                raise ValueError(f"{out} holds a preparation with other settings; pass --overwrite or choose "
                                 "another --out")
            return existing
        for shard in existing.get("shards", []):
            (out / shard["file"]).unlink(missing_ok=True)
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} exists and is not a `ttt prepare` directory; choose an empty or new --out")
    out.mkdir(parents=True, exist_ok=True)
    manifest = {**settings, "shards": [], "complete": False}
    atomic_write_json(path, manifest)
    return manifest


def _write_shard(out: Path, index: int, docs, dtype: str, bar) -> dict:
    """Write one shard atomically; returns its manifest entry."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("name", pa.string()), ("tokens", pa.large_list(getattr(pa, dtype)()))])
    name = f"shard-{index:05d}.parquet"
    tmp = out / f".{name}.tmp"
    num_docs = num_tokens = 0
    rows: list = []

    def flush(writer) -> None:
        if rows:
            lengths = np.array([len(d.tokens) for d in rows], dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(lengths)])  # [rows + 1], document boundaries
            values = np.concatenate([d.tokens for d in rows]).astype(dtype)
            tokens = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(values))
            writer.write_table(pa.table({"name": [d.name for d in rows], "tokens": tokens}, schema=schema))
            rows.clear()

    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for doc in docs:
                rows.append(doc)
                num_docs += 1
                num_tokens += len(doc.tokens)
                bar.update(1)
                if len(rows) >= _ROWS_PER_WRITE:
                    flush(writer)
            flush(writer)
        os.replace(tmp, out / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"index": index, "file": name, "num_docs": num_docs, "num_tokens": num_tokens}


def prepare_command(sources: list[str], /, *, out: str, tokenizer: str = "bytes", text_field: str = "text",
                    bos_token: str | None = None, eos_token: str | None = None,
                    invalid_utf8: Literal["error", "replace"] = "error", overwrite: bool = False,
                    on_bad_record: Literal["error", "skip"] = "error") -> int:
    """Tokenize sources once into parquet token shards plus manifest.json.

    Train on them with --data.sources '[DIR]' and the same --data.tokenizer; rerunning an interrupted
    command continues where it stopped.

    Args:
        sources: stdlib, files, directories, globs or hf:<repo>[:<config>][@<split>].
        out: output directory (created; rerun to resume).
        tokenizer: bytes, a tokenizer.json path, or a hub name.
        text_field: text field of .jsonl/.json/.parquet and hub records.
        bos_token: BOS token of a Hugging Face tokenizer (default: detected).
        eos_token: EOS token of a Hugging Face tokenizer (default: detected).
        invalid_utf8: text tokenizers: stop at invalid UTF-8, or replace it with U+FFFD.
        overwrite: replace an existing preparation in --out.
        on_bad_record: every record is read first; stop at the first bad one (naming file:line), or skip
            bad records (counted).
    """
    manifest = prepare(sources, out, tokenizer, text_field, bos_token, eos_token, invalid_utf8, overwrite,
                       on_bad_record=on_bad_record)
    docs = sum(s["num_docs"] for s in manifest["shards"])
    tokens = sum(s["num_tokens"] for s in manifest["shards"])
    size = sum((Path(out) / s["file"]).stat().st_size for s in manifest["shards"])
    print(f"{out}: {len(manifest['shards'])} shards, {docs:,} documents, {tokens:,} tokens "
          f"({manifest['dtype']}, {size / 2**20:.1f} MiB); train with --data.sources '[{out}]' "
          f"--data.tokenizer {manifest['tokenizer']}")
    return 0
