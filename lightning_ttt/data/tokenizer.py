"""Byte-level tokenizer: ids 0..255 are raw UTF-8 bytes, plus BOS/EOS specials."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class ByteTokenizer:
    """Maps text to its UTF-8 bytes; any byte string (even invalid UTF-8) round-trips."""

    bos_id: int = 256
    eos_id: int = 257
    vocab_size: int = 258

    def encode(self, text: str | bytes) -> np.ndarray:
        """Return the bytes of ``text`` as int32 ids, shape [num_bytes]; no specials added."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Decode ids to text, skipping special ids; invalid UTF-8 becomes U+FFFD."""
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        data = arr[(arr >= 0) & (arr < 256)].astype(np.uint8).tobytes()
        return data.decode("utf-8", errors="replace")
