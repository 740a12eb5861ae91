"""Prefill and decoding equal the evaluation forward on the whole (prompt + generated) sequence:
the same TTT steps (``chunk_step``), masked as in training, also with a BOS mid-prompt and an active clip."""

from __future__ import annotations

import pytest
import torch

from lightning_ttt.data.packing import target_mask
from lightning_ttt.infer import Generator, InferenceSession, SamplingConfig
from lightning_ttt.model.transformer import token_nll
from lightning_ttt.ttt.objective import lm_loss
from lightning_ttt.ttt.update import make_update

from infer_models import tiny_model
from tiny_models import LLAMA_OPTIONS  # tests/tiny_models.py


def reference(model, seq: torch.Tensor, mask: torch.Tensor | None = None):
    """Evaluation forward on seq [B, L]: logits [B, L-1, V], token NLL [B, L-1] and inner gradient norms
    [B, chunks] of inputs seq[:, :-1]; the loss mask is the training data's (BOS targets masked) unless given.

    The inputs are padded to a multiple of b; attention is causal, so padding changes nothing before it.
    """
    inputs, targets = seq[:, :-1], seq[:, 1:]
    mask = target_mask(targets, model.cfg.bos_id) if mask is None else mask
    b, n = model.cfg.mini_batch, inputs.shape[1]
    pad = -n % b if n > b else 0
    inputs = torch.nn.functional.pad(inputs, (0, pad), value=3)
    targets = torch.nn.functional.pad(targets, (0, pad), value=3)
    mask = torch.nn.functional.pad(mask, (0, pad), value=True)
    ttt = model.cfg.method == "e2e"
    out = lm_loss(model, inputs, targets, mask, ttt=ttt, update=make_update(model.cfg), create_graph=False,
                  keep_logits=True)
    return out.logits[:, :n], out.token_nll[:, :n], out.inner.grad_norm if ttt else None


def prompts(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 11, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("options", [{}, LLAMA_OPTIONS], ids=["paper", "llama"])
@pytest.mark.parametrize("length", [3, 12, 10, 17])
@pytest.mark.parametrize("method", ["e2e", "swa", "fa"])
def test_prefill_nll_matches_evaluation(method, length, options):
    model = tiny_model(method, **options)
    prompt = prompts(2, length)
    session = InferenceSession(model, 2, capacity=length)
    logits = session.feed(prompt, keep_logits=True)  # [B, T, V]
    assert logits.shape == (2, length, 11)
    ref_logits, ref_nll, _ = reference(model, prompt)
    nll = token_nll(logits[:, :-1], prompt[:, 1:])
    torch.testing.assert_close(nll, ref_nll, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(logits[:, :-1], ref_logits, rtol=1e-9, atol=1e-9)
    if method == "e2e":  # steps only for mini-batches whose last target is already known
        assert len(session.grad_norms) == ((length - 1) // 4 if length > 4 else 0)


def test_prefill_chunking_does_not_matter():
    model = tiny_model("e2e")
    prompt = prompts(2, 15)
    whole = InferenceSession(model, 2).feed(prompt, keep_logits=True)
    session = InferenceSession(model, 2)
    pieces = [session.feed(piece, keep_logits=True) for piece in prompt.split([1, 6, 3, 5], dim=1)]
    torch.testing.assert_close(torch.cat(pieces, 1), whole, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("piece", [3, 9, 13])  # shorter than b, two mini-batches and a bit, wider than the window
@pytest.mark.parametrize("method", ["e2e", "swa"])
def test_prefill_pieces_do_not_matter(monkeypatch, method, piece):
    """The blocks without fast weights read a prompt piece by piece (the ring cache then holds the older keys
    out of order); e2e's suffix steps through each piece by mini-batches: the evaluation's logits either way."""
    monkeypatch.setattr(InferenceSession, "piece_len", lambda self: piece)
    model = tiny_model(method)
    prompt = prompts(2, 31)
    session = InferenceSession(model, 2)
    logits = torch.cat([session.feed(p, keep_logits=True) for p in prompt.split([20, 11], dim=1)], dim=1)
    ref_logits, _, _ = reference(model, prompt)
    torch.testing.assert_close(logits[:, :-1], ref_logits, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("length", [8, 10])
@pytest.mark.parametrize("method", ["e2e", "swa", "fa"])
def test_greedy_decoding_matches_evaluation(method, length):
    model = tiny_model(method)
    prompt = prompts(2, length, seed=2)
    new = 13
    out = Generator(model).generate(prompt, new, SamplingConfig(greedy=True), keep_logits=True)
    assert out.tokens.shape == (2, new) and out.logits.shape == (2, new, 11)
    seq = torch.cat([prompt, out.tokens], dim=1)  # [B, T + N]
    ref_logits, _, _ = reference(model, seq)
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


def with_bos(batch: int, length: int, positions: list[int], seed: int = 6) -> torch.Tensor:
    """Random prompts without BOS (id 1) except at ``positions``: document boundaries mid-prompt."""
    ids = torch.randint(3, 11, (batch, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = 1
    ids[:, positions] = 1
    return ids


@pytest.mark.parametrize("clip", [1e3, 0.05])
def test_bos_mid_prompt_gives_the_evaluation_logits(clip):
    """A BOS target is not scored in the TTT step, at inference as in evaluation (training's mask),
    with the clip inactive and active."""
    model = tiny_model("e2e", inner_clip=clip)
    prompt = with_bos(2, 19, [5, 10, 12])  # targets 4, 9, 11 are BOS: masked in chunks 1 and 2
    session = InferenceSession(model, 2)
    logits = session.feed(prompt, keep_logits=True)
    ref_logits, _, norms = reference(model, prompt)
    torch.testing.assert_close(logits[:, :-1], ref_logits, rtol=1e-9, atol=1e-9)
    assert len(session.grad_norms) == 4
    torch.testing.assert_close(torch.stack(session.grad_norms, 1), norms[:, :4], rtol=1e-9, atol=1e-12)
    if clip < 1:
        assert (norms > clip).all()  # every step was clipped
    else:
        assert (norms < clip).all()
    # the mask matters: scoring the BOS targets (an all-ones mask) takes other steps
    unmasked, _, _ = reference(model, prompt, mask=torch.ones(2, 18, dtype=torch.bool))
    assert (unmasked[:, 8:] - ref_logits[:, 8:]).abs().max() > 1e-3


def test_decoding_after_a_bos_mid_prompt_matches_evaluation():
    model = tiny_model("e2e", inner_clip=0.05)
    prompt = with_bos(2, 10, [7], seed=7)  # the first mini-batch's step happens during decoding: target 7 is BOS
    out = Generator(model).generate(prompt, 13, SamplingConfig(greedy=True), keep_logits=True)
    seq = torch.cat([prompt, out.tokens], dim=1)
    ref_logits, _, norms = reference(model, seq)
    torch.testing.assert_close(out.logits, ref_logits[:, 9:], rtol=1e-9, atol=1e-9)
    assert (norms > 0.05).any()


def test_a_fully_masked_mini_batch_takes_no_step():
    """All targets of a mini-batch are BOS: its loss is 0, its gradient 0, the fast weights stay."""
    model = tiny_model("e2e")
    prompt = with_bos(1, 5, [1, 2, 3, 4])  # targets 0..3 (the whole first mini-batch) are BOS
    session = InferenceSession(model, 1)
    logits = session.feed(prompt, keep_logits=True)
    assert len(session.grad_norms) == 1 and session.grad_norms[0].item() == 0
    for name, w in model.fast_weights().items():
        torch.testing.assert_close(session.fast[name][0], w.detach(), rtol=0, atol=0)
    torch.testing.assert_close(logits[:, :-1], reference(model, prompt)[0], rtol=1e-9, atol=1e-9)
