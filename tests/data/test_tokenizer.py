from __future__ import annotations

import numpy as np

from lightning_ttt.data import ByteTokenizer


def test_constants():
    tok = ByteTokenizer()
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (256, 257, 258)


def test_roundtrip_unicode():
    tok = ByteTokenizer()
    text = "héllo wörld ✓ 🚀\n\tend"
    ids = tok.encode(text)
    assert ids.dtype == np.int32
    assert len(ids) == len(text.encode("utf-8"))
    assert ids.max() < 256
    assert tok.decode(ids) == text


def test_bytes_input_keeps_invalid_utf8():
    tok = ByteTokenizer()
    raw = b"ok\xff\xfe\x80!"
    ids = tok.encode(raw)
    assert ids.tolist() == list(raw)
    assert tok.decode(ids) == raw.decode("utf-8", errors="replace")
    assert "\ufffd" in tok.decode(ids)


def test_decode_skips_special_ids():
    tok = ByteTokenizer()
    ids = [tok.bos_id, *tok.encode("abc").tolist(), tok.eos_id]
    assert tok.decode(ids) == "abc"
    assert tok.decode(np.array(ids, dtype=np.int64)) == "abc"


def test_encode_empty():
    tok = ByteTokenizer()
    assert tok.encode("").shape == (0,)
    assert tok.decode([]) == ""
