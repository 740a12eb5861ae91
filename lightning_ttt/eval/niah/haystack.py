"""Haystacks: the text a needle hides in, as a list of units the needle is inserted between.

* ``noise`` (S-NIAH-1): one fixed block of short sentences, repeated; units are joined by newlines.
* ``essay`` (S-NIAH-2/3): natural-language prose from ``--haystack`` sources (text files, a
  directory, or ``hf:<dataset>``), whitespace collapsed and split into sentences with NLTK's Punkt
  splitter; units are joined by spaces. A haystack longer than the corpus repeats it.

A needle therefore always sits between two whole sentences, never inside a word.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from lightning_ttt.data.corpus import STDLIB
from lightning_ttt.data.sources import open_records

NOISE, ESSAY = "noise", "essay"
# A public collection of Paul Graham's essays on the Hugging Face hub (the essays RULER uses), field `text`.
ESSAY_EXAMPLE = "hf:sgoel9/paul_graham_essays"


@dataclass(frozen=True)
class Haystack:
    kind: str  # NOISE or ESSAY
    units: tuple[str, ...]  # sentences (essay) or the noise block; cycled when more are needed
    separator: str  # joins units, and a unit and the needle
    source: str  # where the text came from, for the report

    def join(self, start: int, stop: int) -> str:
        """Units ``start .. stop-1`` (indices past the end wrap around) joined by the separator."""
        n = len(self.units)
        return self.separator.join(self.units[i % n] for i in range(start, stop))


def noise_haystack(noise: str) -> Haystack:
    return Haystack(NOISE, (noise,), "\n", "noise")


@lru_cache(maxsize=1)
def _splitter():
    """NLTK's Punkt sentence splitter: the pretrained English model when its data is installed
    (``nltk.download('punkt_tab')``), else Punkt with its default parameters (no abbreviation list)."""
    import nltk
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return "punkt (english)", lambda text: nltk.sent_tokenize(text, language="english")
    except LookupError:
        return "punkt (default parameters)", PunktSentenceTokenizer().tokenize


def splitter_name() -> str:
    return _splitter()[0]


def split_sentences(text: str) -> list[str]:
    """Whitespace collapsed to single spaces, then split into sentences."""
    return [s for s in _splitter()[1](re.sub(r"\s+", " ", text).strip()) if s.strip()]


def essay_haystack(sources: Sequence[str], text_field: str = "text", min_chars: int = 1 << 20) -> Haystack:
    """Prose from ``sources`` (documents joined in order) until ``min_chars`` characters are read."""
    if not sources:
        raise ValueError("--haystack is empty; give prose text files, a directory, or hf:<dataset>")
    for source in sources:
        if source == STDLIB:
            raise ValueError(f"--haystack {STDLIB}: the standard library is source code, not prose; give essays, "
                             f"e.g. {ESSAY_EXAMPLE}")
    records = open_records(list(sources), text_field=text_field, setting="--haystack")
    if records.manifests:
        raise ValueError(f"--haystack {records.manifests[0][0]}: a `ttt prepare` directory holds token ids, "
                         "not text; give the text files it was prepared from")
    texts, total = [], 0
    for record in records.dataset:
        text = record[records.text_key]
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        if text and text.strip():
            texts.append(text)
            total += len(text)
        if total >= min_chars:
            break
    sentences = split_sentences(" ".join(texts))
    if len(sentences) < 2:
        raise ValueError(f"--haystack {' '.join(sources)}: found {len(sentences)} sentence(s) of prose; "
                         "an essay haystack needs text made of sentences")
    return Haystack(ESSAY, tuple(sentences), " ", " ".join(sources))
