"""From records to tokenized documents of one split: split rule, tokenization, length filter."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from lightning_ttt.data.tokenizer import Tokenizer

SPLITS = ("train", "validation", "all")


@dataclass(frozen=True)
class Document:
    """One document: a stable name (drives the split) and its token ids, shape [num_tokens]."""

    name: str
    tokens: np.ndarray


def document_key(record: dict, text_key: str = "text") -> str:
    """The record's name, or ``sha1:<hex>`` of its text for unnamed (hub) records."""
    name = record.get("name")
    if name:
        return name
    text = record[text_key]
    data = text if isinstance(text, bytes) else text.encode("utf-8", errors="surrogatepass")
    return "sha1:" + hashlib.sha1(data).hexdigest()


def is_validation(key: str, val_fraction: float) -> bool:
    """Deterministic split: sha1 of the document key, identical on every machine and run."""
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16) % 1000 < val_fraction * 1000


@dataclass
class Counts:
    """What one reader has seen: documents read, kept, and dropped for being short."""

    docs: int = 0
    kept: int = 0
    short: int = 0
    tokens: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"docs": self.docs, "kept": self.kept, "short": self.short, "tokens": self.tokens}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.docs, self.kept, self.short, self.tokens = (int(state[k]) for k in ("docs", "kept", "short", "tokens"))


class DocumentReader:
    """Tokenize the records of one split; drop documents with fewer than ``min_doc_tokens`` tokens.

    Args:
        tokenizer: turns text into ids (prepared records already hold ids).
        text_key: record field holding the text.
        split: ``train`` keeps documents outside the validation hash range, ``validation`` those
            inside it, ``all`` every document (used when validation has its own sources).
        val_fraction: size of the validation hash range.
        min_doc_tokens: documents shorter than this (in tokens, without BOS/EOS) are dropped.
    """

    def __init__(self, tokenizer: Tokenizer, text_key: str = "text", split: str = "all", val_fraction: float = 0.0,
                 min_doc_tokens: int = 0) -> None:
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is unknown; expected one of {', '.join(SPLITS)}")
        self.tokenizer = tokenizer
        self.text_key = text_key
        self.split = split
        self.val_fraction = val_fraction
        self.min_doc_tokens = min_doc_tokens
        self.counts = Counts()

    def __call__(self, record: dict) -> Document | None:
        """The record's document, or None when it belongs to the other split or is too short."""
        name = document_key(record, self.text_key)
        if self.split != "all" and is_validation(name, self.val_fraction) != (self.split == "validation"):
            return None
        tokens = self._tokens(record, name)
        self.counts.docs += 1
        if len(tokens) < self.min_doc_tokens:
            self.counts.short += 1
            return None
        self.counts.kept += 1
        self.counts.tokens += len(tokens)
        return Document(name, tokens)

    def _tokens(self, record: dict, name: str) -> np.ndarray:
        if "tokens" in record:
            tokens = np.asarray(record["tokens"])
            if len(tokens) and int(tokens.max()) >= self.tokenizer.vocab_size:
                raise ValueError(f"{name}: token id {int(tokens.max())} is outside the tokenizer's vocabulary "
                                 f"(vocab_size={self.tokenizer.vocab_size}, data.tokenizer={self.tokenizer.name!r})")
            return tokens.astype(np.int32, copy=False)
        return self.tokenizer.encode(record[self.text_key], name)
