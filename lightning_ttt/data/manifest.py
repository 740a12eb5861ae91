"""The manifest of a ``ttt prepare`` directory: its format, reading it, and checking the tokenizer against it."""

from __future__ import annotations

import json
from pathlib import Path

FORMAT = "lightning_ttt.tokens/1"
MANIFEST = "manifest.json"


def read_manifest(directory: Path) -> dict:
    """The manifest of a finished ``ttt prepare`` directory (one-line errors otherwise)."""
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable manifest ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a `ttt prepare` manifest (expected format {FORMAT!r})")
    if not manifest.get("complete"):
        raise ValueError(f"{directory}: preparation incomplete ({len(manifest['shards'])} of {manifest['num_shards']} "
                         "shards); rerun the same `ttt prepare` command to finish it")
    for shard in manifest["shards"]:
        if not (Path(directory) / shard["file"]).is_file():
            raise ValueError(f"{directory}: shard {shard['file']} listed in {MANIFEST} is missing")
    return manifest


def check_tokenizer(directory: Path, manifest: dict, tokenizer) -> None:
    """Prepared tokens only make sense with the tokenizer that wrote them."""
    if manifest["tokenizer_fingerprint"] != tokenizer.fingerprint:
        raise ValueError(f"{directory} was prepared with tokenizer {manifest['tokenizer']!r} (vocab_size "
                         f"{manifest['vocab_size']}) but data.tokenizer={tokenizer.name!r} (vocab_size "
                         f"{tokenizer.vocab_size}); set data.tokenizer to the one it was prepared with")
