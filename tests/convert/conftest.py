"""Shared fixtures of the importer tests: the vendored authors' checkpoint and a tokenizer that fits it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from authors_fixture import AUTHORS_CONFIG, RELEASED_ROOT  # tests/convert/authors_fixture.py


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    """Tiny tensors: one thread (see tests/conftest.py)."""


@pytest.fixture(scope="session")
def imported(tmp_path_factory) -> Path:
    """The weights-only root imported once with the fixture's config."""
    pytest.importorskip("tensorstore")
    from lightning_ttt.convert.jax_import import import_jax

    return import_jax(RELEASED_ROOT, tmp_path_factory.mktemp("imported") / "tiny", config=AUTHORS_CONFIG,
                      progress=False)


WORDS = [f"w{i}" for i in range(3, 256)]


@pytest.fixture(scope="session")
def word_tokenizer(tmp_path_factory) -> Path:
    """A word-level tokenizer.json with the fixture model's vocabulary: 256 ids, <s> = 1, </s> = 2."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{word: i for i, word in enumerate(WORDS, start=3)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="session")
def word_corpus(tmp_path_factory) -> Path:
    """Eight text documents of 300 random words of that vocabulary."""
    folder = tmp_path_factory.mktemp("words")
    rng = random.Random(0)
    for i in range(8):
        (folder / f"doc{i}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(300)))
    return folder
