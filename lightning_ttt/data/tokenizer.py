"""Tokenizers: byte-level (the default) and any Hugging Face ``tokenizers`` tokenizer.

Both turn one document (``str``, or the raw ``bytes`` of a ``.txt`` file) into an int32 id
array without special tokens; packing adds BOS/EOS. Invalid UTF-8 policy: the byte tokenizer
keeps every byte as it is; a text tokenizer either stops with the document name and byte
offset (``invalid_utf8="error"``) or replaces each bad byte sequence by U+FFFD (``"replace"``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np

INVALID_UTF8 = ("error", "replace")
_BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>", "[BOS]", "<|startoftext|>", "<|endoftext|>")
_EOS_NAMES = ("<|end_of_text|>", "</s>", "<eos>", "[EOS]", "<|endoftext|>")


class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer."""

    name: str  # the ``data.tokenizer`` spec it was loaded from
    fingerprint: str  # changes whenever the id mapping changes
    vocab_size: int
    bos_id: int
    eos_id: int

    def encode(self, text: str | bytes, where: str = "text") -> np.ndarray: ...

    def decode(self, ids: Iterable[int] | np.ndarray) -> str: ...


class ByteTokenizer:
    """Ids 0..255 are the UTF-8 bytes of the text; BOS 256, EOS 257. Any byte string round-trips."""

    name = "bytes"
    fingerprint = "bytes"
    bos_id: int = 256
    eos_id: int = 257
    vocab_size: int = 258

    def encode(self, text: str | bytes, where: str = "text") -> np.ndarray:
        """Return the bytes of ``text`` as int32 ids, shape [num_bytes]; no specials added."""
        data = text if isinstance(text, bytes) else text.encode("utf-8", errors="surrogatepass")
        return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Decode ids to text, skipping special ids; invalid UTF-8 becomes U+FFFD."""
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        data = arr[(arr >= 0) & (arr < 256)].astype(np.uint8).tobytes()
        return data.decode("utf-8", errors="replace")


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` (a local ``tokenizer.json`` or a hub name) with BOS/EOS ids."""

    def __init__(self, tokenizer, name: str, bos_token: str | None = None, eos_token: str | None = None,
                 invalid_utf8: str = "error") -> None:
        if invalid_utf8 not in INVALID_UTF8:
            raise ValueError(f"data.invalid_utf8={invalid_utf8!r} is unknown; expected one of "
                             f"{', '.join(INVALID_UTF8)}")
        self._tok = tokenizer
        self.name = name
        self.invalid_utf8 = invalid_utf8
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.bos_id = self._special(bos_token, _BOS_NAMES, "bos_token")
        self.eos_id = self._special(eos_token, _EOS_NAMES, "eos_token")
        self.fingerprint = hashlib.sha1(tokenizer.to_str().encode("utf-8")).hexdigest()[:16]

    def _special(self, token: str | None, candidates: tuple[str, ...], setting: str) -> int:
        vocab = self._tok.get_vocab(with_added_tokens=True)
        if token is not None:
            if token not in vocab:
                raise ValueError(f"data.{setting}={token!r} is not in the vocabulary of tokenizer {self.name!r}")
            return vocab[token]
        for candidate in candidates:
            if candidate in vocab:
                return vocab[candidate]
        raise ValueError(f"tokenizer {self.name!r} has none of the tokens {', '.join(candidates)}; "
                         f"set data.{setting} to its {setting.split('_')[0].upper()} token")

    def encode(self, text: str | bytes, where: str = "text") -> np.ndarray:
        """Token ids of one document, shape [num_tokens], int32; ``where`` names it in errors."""
        text = to_text(text, where, self.invalid_utf8)
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=True)


def to_text(data: str | bytes, where: str, invalid_utf8: str = "error") -> str:
    """Decode UTF-8 (or check a ``str`` has no lone surrogates) under the invalid-UTF-8 policy."""
    try:
        if isinstance(data, bytes):
            return data.decode("utf-8")
        data.encode("utf-8")  # lone surrogates (e.g. from JSON "\udc80") cannot reach a text tokenizer
        return data
    except UnicodeError as err:
        if invalid_utf8 == "replace":
            raw = data if isinstance(data, bytes) else data.encode("utf-8", errors="surrogatepass")
            return raw.decode("utf-8", errors="replace")
        unit = "byte" if isinstance(data, bytes) else "character"
        raise ValueError(f"{where}: invalid UTF-8 at {unit} offset {err.start} "
                         "(data.invalid_utf8='error'; set it to 'replace' to substitute U+FFFD)") from None


def load_tokenizer(spec: str = "bytes", bos_token: str | None = None, eos_token: str | None = None,
                   invalid_utf8: str = "error") -> ByteTokenizer | HFTokenizer:
    """``"bytes"``, a ``tokenizer.json`` file (or a directory holding one), or a hub repository name."""
    if spec == "bytes":
        return ByteTokenizer()
    from tokenizers import Tokenizer as _Tokenizer

    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if path.exists() or path.suffix == ".json" or spec.startswith((".", "/", "~")):
        if not path.is_file():
            raise FileNotFoundError(f"data.tokenizer={spec!r}: no tokenizer file at {path}")
        try:
            tok = _Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"data.tokenizer={spec!r}: {path} is not a tokenizers JSON file "
                             f"({_first_line(err)})") from None
    else:
        try:
            tok = _Tokenizer.from_pretrained(spec)
        except Exception as err:
            raise ValueError(f"data.tokenizer={spec!r}: not a local file, and loading it from the Hugging Face "
                             f"hub failed ({_first_line(err)})") from None
    return HFTokenizer(tok, spec, bos_token, eos_token, invalid_utf8)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
