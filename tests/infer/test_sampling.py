"""Sampling filters, stop ids, seeds, streaming and input errors."""

from __future__ import annotations

import pytest
import torch

from infer_models import tiny_model
from lightning_ttt.infer import Generator, SamplingConfig
from lightning_ttt.infer.sampling import apply_repetition_penalty, filter_top_k, filter_top_p, sample


def test_repetition_penalty_hf_rule():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0]]


def test_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_top_k(logits, 2)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_top_p(logits, 0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_top_p(logits, 0.1)).tolist() == [[True, False, False, False]]
    seen = torch.zeros(1, 4, dtype=torch.bool)
    draws = {sample(logits, seen, SamplingConfig(top_k=2), torch.Generator().manual_seed(s)).item() for s in range(50)}
    assert draws == {0, 1}


def test_seed_reproducible_and_stop_ids():
    model = tiny_model("e2e")
    prompt = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(0))
    cfg = SamplingConfig(temperature=1.5, seed=7)
    first = Generator(model).generate(prompt, 10, cfg).tokens
    assert torch.equal(first, Generator(model).generate(prompt, 10, cfg).tokens)
    stop = int(first[0, 2])
    out = Generator(model).generate(prompt, 10, SamplingConfig(temperature=1.5, seed=7, stop_ids=(stop,)))
    row = out.tokens[0].tolist()
    assert stop in row[:3] and bool(out.finished[0])
    assert all(t == stop for t in row[row.index(stop):])  # a stopped row repeats its stop id


def test_streaming_yields_each_token():
    model = tiny_model("swa")
    prompt = torch.randint(0, 11, (1, 5), generator=torch.Generator().manual_seed(0))
    streamed = [step.tokens.item() for step in Generator(model).stream(prompt, 7, SamplingConfig(greedy=True))]
    assert streamed == Generator(model).generate(prompt, 7, SamplingConfig(greedy=True)).tokens[0].tolist()


@pytest.mark.parametrize("prompt, new, message", [
    (torch.zeros(1, 0, dtype=torch.long), 3, "prompt is empty"),
    (torch.tensor([[1, 11]]), 3, "outside the vocabulary"),
    (torch.tensor([[1, -1]]), 3, "outside the vocabulary"),
    (torch.tensor([[1, 2]]), 0, "max_new_tokens=0"),
])
def test_bad_input(prompt, new, message):
    with pytest.raises(ValueError, match=message):
        Generator(tiny_model("e2e")).generate(prompt, new)


def test_bad_sampling_settings():
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0)
