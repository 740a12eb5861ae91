"""The sliced linear + cross-entropy: same NLL and gradients (first and second order) as the full logits,
and no [T, V] tensor kept for the backward pass."""

from __future__ import annotations

import torch

from lightning_ttt.model.layers import RMSNorm
from lightning_ttt.model.loss import linear_nll, token_nll

T, D, V = 37, 8, 50


def _inputs():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, T, D, generator=g, dtype=torch.float64, requires_grad=True)
    head = torch.randn(V, D, generator=g, dtype=torch.float64, requires_grad=True)
    norm = RMSNorm(D, eps=1e-6).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=g)
    targets = torch.randint(0, V, (2, T), generator=g)
    return h, head, norm, targets


def test_sliced_nll_and_gradients_equal_the_full_logits() -> None:
    h, head, norm, targets = _inputs()
    params = [h, head, norm.weight]
    full = token_nll(norm(h) @ head.T, targets)
    sliced = linear_nll(h, norm, head, targets, tokens=5)  # 8 slices, the last one short
    torch.testing.assert_close(sliced, full, rtol=0, atol=1e-12)
    weights = torch.linspace(0.1, 2.0, T, dtype=torch.float64)
    g_full = torch.autograd.grad((full * weights).sum(), params)
    g_sliced = torch.autograd.grad((sliced * weights).sum(), params)
    for a, b in zip(g_sliced, g_full):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_gradients_of_gradients_equal_the_full_logits() -> None:
    """As in the e2e inner loop: a gradient taken with create_graph, then differentiated again."""
    h, head, norm, targets = _inputs()

    def meta(nll_fn):
        inner = torch.autograd.grad(nll_fn().sum(), head, create_graph=True)[0]  # [V, D]
        return torch.autograd.grad((inner ** 2).sum(), [h, norm.weight])

    full = meta(lambda: token_nll(norm(h) @ head.T, targets))
    sliced = meta(lambda: linear_nll(h, norm, head, targets, tokens=6))
    for a, b in zip(sliced, full):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_no_tensor_of_all_logits_is_kept_for_backward() -> None:
    h, head, norm, targets = _inputs()
    largest = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        largest.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        linear_nll(h, norm, head, targets, tokens=5).sum().backward()
    assert max(largest) < 2 * 5 * V  # one slice's logits at most, never 2 x T x V
    largest.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        token_nll(norm(h) @ head.T, targets).sum().backward()
    assert max(largest) >= 2 * T * V  # the unsliced path does keep them (the check can fail)
