"""Synthetic documents for the data tests: every word is tagged with its document and position."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = ("long context test time training window document token stream shard rank worker resume "
         "packing tokenizer vocabulary batch epoch seed buffer inner outer loop weights gradient").split()


def doc_text(i: int, words: int = 60) -> str:
    """Document ``i``: words tagged ``<i>.<j>:``, so every window of >= ~16 bytes is unique."""
    return " ".join(f"{i}.{j}:{WORDS[(i * 7 + j * 3) % len(WORDS)]}" for j in range(words)) + "\n"


def write_jsonl_shards(root: Path, num_files: int, docs_per_file: int, words: int = 60, start: int = 0) -> list[Path]:
    """``num_files`` JSONL files of unique documents, numbered from ``start``."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in range(num_files):
        path = root / f"part-{f:03d}.jsonl"
        rows = [{"text": doc_text(start + f * docs_per_file + d, words)} for d in range(docs_per_file)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(path)
    return paths
