from __future__ import annotations

import json

import numpy as np
import pytest

from lightning_ttt.data import ByteTokenizer, HFTokenizer, load_tokenizer


def test_byte_constants():
    tok = ByteTokenizer()
    assert (tok.bos_id, tok.eos_id, tok.vocab_size, tok.name) == (256, 257, 258, "bytes")
    assert load_tokenizer("bytes").fingerprint == "bytes"


def test_byte_roundtrip_unicode():
    tok = ByteTokenizer()
    text = "héllo wörld ✓ 🚀\n\tend"
    ids = tok.encode(text)
    assert ids.dtype == np.int32
    assert len(ids) == len(text.encode("utf-8"))
    assert ids.max() < 256
    assert tok.decode(ids) == text


def test_byte_keeps_invalid_utf8():
    tok = ByteTokenizer()
    raw = b"ok\xff\xfe\x80!"
    ids = tok.encode(raw)
    assert ids.tolist() == list(raw)
    assert tok.decode(ids) == raw.decode("utf-8", errors="replace")


def test_byte_decode_skips_special_ids_and_empty():
    tok = ByteTokenizer()
    assert tok.decode([tok.bos_id, *tok.encode("abc").tolist(), tok.eos_id]) == "abc"
    assert tok.encode("").shape == (0,)


def test_hf_tokenizer_from_local_file(bpe_path):
    tok = load_tokenizer(str(bpe_path))
    assert isinstance(tok, HFTokenizer)
    assert (tok.bos_id, tok.eos_id) == (0, 1)  # "<s>", "</s>" were trained first
    assert 300 < tok.vocab_size <= 400
    ids = tok.encode("long context test time training")
    assert ids.dtype == np.int32 and 0 < len(ids) < len("long context test time training")
    assert tok.bos_id not in ids.tolist()  # no specials added by encode
    assert tok.decode(ids) == "long context test time training"
    assert load_tokenizer(str(bpe_path.parent)).fingerprint == tok.fingerprint  # a directory works too
    assert tok.fingerprint != "bytes"


def test_hf_special_tokens_explicit_and_missing(bpe_path, tmp_path):
    tok = load_tokenizer(str(bpe_path), bos_token="</s>", eos_token="</s>")
    assert tok.bos_id == tok.eos_id == 1
    with pytest.raises(ValueError, match=r"data\.bos_token='<bos>' is not in the vocabulary"):
        load_tokenizer(str(bpe_path), bos_token="<bos>")
    spec = json.loads(bpe_path.read_text())
    spec["added_tokens"] = []
    spec["model"]["vocab"] = {k: v for k, v in spec["model"]["vocab"].items() if k not in ("<s>", "</s>")}
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"has none of the tokens .*set data\.bos_token"):
        load_tokenizer(str(plain))


def test_invalid_utf8_policy_for_text_tokenizers(bpe_path):
    strict = load_tokenizer(str(bpe_path))
    with pytest.raises(ValueError, match=r"^books/a\.txt: invalid UTF-8 at byte offset 3 \(data\.invalid_utf8"):
        strict.encode(b"abc\xffdef", "books/a.txt")
    lenient = load_tokenizer(str(bpe_path), invalid_utf8="replace")
    assert lenient.decode(lenient.encode(b"abc\xffdef", "books/a.txt")) == "abc\ufffddef"
    with pytest.raises(ValueError, match="invalid_utf8"):
        load_tokenizer(str(bpe_path), invalid_utf8="ignore")


def test_tokenizer_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.tokenizer=.*missing\.json"):
        load_tokenizer(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json is not a tokenizers JSON file"):
        load_tokenizer(str(bad))
    with pytest.raises(ValueError, match=r"data\.tokenizer='no-such-org/no-such-tokenizer'.*hub"):
        load_tokenizer("no-such-org/no-such-tokenizer")  # HF_HUB_OFFLINE=1 in tests: fails fast
