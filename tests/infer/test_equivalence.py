"""Prefill and decoding equal the evaluation forward on the whole (prompt + generated) sequence."""

from __future__ import annotations

import pytest
import torch

from lightning_ttt.infer import Generator, InferenceSession, SamplingConfig, default_update
from lightning_ttt.model.transformer import token_nll
from lightning_ttt.ttt.objective import lm_loss

from infer_models import tiny_model


def reference(model, seq: torch.Tensor):
    """Evaluation forward on seq [B, L]: logits [B, L-1, V] and token NLL [B, L-1] of inputs seq[:, :-1].

    The inputs are padded to a multiple of b; attention is causal, so padding changes nothing before it.
    """
    inputs, targets = seq[:, :-1], seq[:, 1:]
    b, n = model.cfg.mini_batch, inputs.shape[1]
    pad = -n % b if n > b else 0
    inputs = torch.nn.functional.pad(inputs, (0, pad), value=3)
    targets = torch.nn.functional.pad(targets, (0, pad), value=3)
    out = lm_loss(model, inputs, targets, torch.ones_like(targets), ttt=model.cfg.method == "e2e",
                  update=default_update(model), create_graph=False, keep_logits=True)
    return out.logits[:, :n], out.token_nll[:, :n]


def prompts(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 11, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("length", [3, 12, 10, 17])
@pytest.mark.parametrize("method", ["e2e", "swa", "fa"])
def test_prefill_nll_matches_evaluation(method, length):
    model = tiny_model(method)
    prompt = prompts(2, length)
    session = InferenceSession(model, 2, capacity=length)
    logits = session.feed(prompt, keep_logits=True)  # [B, T, V]
    assert logits.shape == (2, length, 11)
    ref_logits, ref_nll = reference(model, prompt)
    nll = token_nll(logits[:, :-1], prompt[:, 1:])
    torch.testing.assert_close(nll, ref_nll, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(logits[:, :-1], ref_logits, rtol=1e-9, atol=1e-9)
    if method == "e2e":  # steps only for mini-batches whose last target is already known
        assert session.num_updates == (length - 1) // 4 if length > 4 else session.num_updates == 0


def test_prefill_chunking_does_not_matter():
    model = tiny_model("e2e")
    prompt = prompts(2, 15)
    whole = InferenceSession(model, 2).feed(prompt, keep_logits=True)
    session = InferenceSession(model, 2)
    pieces = [session.feed(piece, keep_logits=True) for piece in prompt.split([1, 6, 3, 5], dim=1)]
    torch.testing.assert_close(torch.cat(pieces, 1), whole, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("length", [8, 10])
@pytest.mark.parametrize("method", ["e2e", "swa", "fa"])
def test_greedy_decoding_matches_evaluation(method, length):
    model = tiny_model(method)
    prompt = prompts(2, length, seed=2)
    new = 13
    out = Generator(model).generate(prompt, new, SamplingConfig(greedy=True), keep_logits=True)
    assert out.tokens.shape == (2, new) and out.logits.shape == (2, new, 11)
    seq = torch.cat([prompt, out.tokens], dim=1)  # [B, T + N]
    ref_logits, _ = reference(model, seq)
    torch.testing.assert_close(out.logits, ref_logits[:, length - 1:], rtol=1e-9, atol=1e-9)
    assert torch.equal(out.tokens, ref_logits[:, length - 1:].argmax(-1))


def test_ttt_steps_change_the_logits():
    """Guard against a vacuous comparison: the same model without TTT steps gives other logits."""
    model = tiny_model("e2e")
    prompt = prompts(1, 16, seed=3)
    with_ttt = InferenceSession(model, 1).feed(prompt, keep_logits=True)
    frozen = InferenceSession(model, 1, update=lambda fast, grads: (fast, torch.zeros(1)))
    without = frozen.feed(prompt, keep_logits=True)
    torch.testing.assert_close(with_ttt[:, :4], without[:, :4])
    assert (with_ttt[:, 5:] - without[:, 5:]).abs().max() > 1e-3


def test_fast_weights_are_per_sequence():
    model = tiny_model("e2e")
    a, b = prompts(1, 14, seed=4), prompts(1, 14, seed=5)
    both = InferenceSession(model, 2).feed(torch.cat([a, b]), keep_logits=True)
    alone = InferenceSession(model, 1).feed(b, keep_logits=True)
    torch.testing.assert_close(both[1:], alone, rtol=1e-9, atol=1e-9)


def test_window_cache_is_constant_size():
    model = tiny_model("e2e")
    session = InferenceSession(model, 1)
    session.feed(prompts(1, 40))
    rows = {c.k.shape[2] for c in session.prefix_caches + session.live_caches + session.anchor_caches}
    assert rows == {model.cfg.window}
    assert session.pending <= model.cfg.mini_batch
