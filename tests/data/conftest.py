"""Fixtures for the data tests: small local corpora and a BPE tokenizer trained here (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest
from corpora import doc_text, write_jsonl_shards


@pytest.fixture(scope="session")
def bpe_path(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer (vocab ~400) trained on a few KB of text, saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([doc_text(i) for i in range(200)], trainer)
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture()
def corpus(tmp_path) -> Path:
    """4 JSONL shards x 6 documents of ~750 bytes."""
    write_jsonl_shards(tmp_path / "corpus", num_files=4, docs_per_file=6)
    return tmp_path / "corpus"
