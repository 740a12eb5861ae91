"""Full-attention inference with a preallocated cache of rotated keys: prefill by chunks (no mask: older and
own keys merged) and decoding token by token give the whole-sequence forward's logits."""

from __future__ import annotations

import pytest
import torch

import lightning_ttt.infer.session as session_module
from lightning_ttt.infer import InferenceSession

from infer_models import tiny_model
from tiny_models import LLAMA_OPTIONS  # tests/tiny_models.py


@pytest.mark.parametrize("options", [{}, dict(LLAMA_OPTIONS, n_heads=4, n_kv_heads=2), {"attention_kernel": "explicit"}],
                         ids=["paper", "llama-gqa", "explicit"])  # explicit: the cache's implied causal mask is built
def test_fa_chunked_prefill_and_decode_equal_the_whole_sequence_forward(monkeypatch, options):
    monkeypatch.setattr(session_module, "PREFILL_PIECE", 5)  # several prefill chunks per call, with older keys
    model = tiny_model("fa", **options)
    ids = torch.randint(0, 11, (2, 40), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = model.logits(model(ids))  # [B, 40, V]: one causal pass over the whole sequence
    session = InferenceSession(model, 2, capacity=40)
    got = [session.feed(ids[:, :3], keep_logits=True), session.feed(ids[:, 3:24], keep_logits=True)]  # prefill
    got += [session.feed(ids[:, t:t + 1], keep_logits=True) for t in range(24, 40)]  # decode, one token at a time
    torch.testing.assert_close(torch.cat(got, dim=1), want, atol=1e-10, rtol=0)
    assert session.prefix_caches[0].ring and session.prefix_caches[0].k.shape[2] == 40  # preallocated, in place
    with pytest.raises(ValueError, match="holds 40 tokens"):
        session.feed(ids[:, :1])
