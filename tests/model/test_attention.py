"""Sliding-window / causal attention: every kernel against a naive full-mask reference."""

from __future__ import annotations

import math
import resource

import pytest
import torch

import lightning_ttt.model.attention as attention
from lightning_ttt.model.attention import sequence_attention, window_mask


pytestmark = pytest.mark.usefixtures("single_thread")


KERNELS = ("sdpa", "math", "explicit")


def naive_attention(q, k, v, window):
    """Full T×T scores with the mask written out element by element (float64)."""
    seq_len = q.shape[-2]
    allowed = torch.zeros(seq_len, seq_len, dtype=torch.bool)
    for p in range(seq_len):
        for pk in range(seq_len):
            allowed[p, pk] = 0 <= p - pk and (window is None or p - pk <= window - 1)
    scores = (q.double() @ k.double().mT) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(-1) @ v.double()


def _qkv(batch=2, heads=3, seq_len=23, hd=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, seq_len, hd, generator=g, dtype=dtype) for _ in range(3)]


def test_window_mask_semantics():
    q_pos = torch.arange(-3, 12)
    k_pos = torch.arange(-6, 14)
    for window in (None, 1, 4, 100):
        mask = window_mask(q_pos, k_pos, window)
        assert mask.shape == (len(q_pos), len(k_pos)) and mask.dtype == torch.bool
        for i, q in enumerate(q_pos.tolist()):
            for j, k in enumerate(k_pos.tolist()):
                expected = 0 <= q - k and k >= 0 and (window is None or q - k < window)
                assert bool(mask[i, j]) == expected, (q, k, window)
    # a query at p with window W sees exactly W keys p-W+1..p once p >= W-1
    mask = window_mask(torch.tensor([10]), torch.arange(20), 4)
    assert mask[0].nonzero().flatten().tolist() == [7, 8, 9, 10]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("window", [None, 1, 3, 5, 7, 16, 23, 40])
@pytest.mark.parametrize("query_block", [5, 1024])
def test_sequence_attention_matches_naive(monkeypatch, kernel, window, query_block):
    # T = 23 is not a multiple of the query block (5) nor of any window < T used here.
    monkeypatch.setattr(attention, "QUERY_BLOCK", query_block)
    q, k, v = _qkv()
    out = sequence_attention(q, k, v, window, kernel=kernel)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, naive_attention(q, k, v, window), atol=1e-12, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("window", [None, 3, 7])
def test_grouped_query_attention_matches_repeated_heads(monkeypatch, kernel, window):
    """6 query heads on 2 key/value heads: kv head g serves query heads 3g..3g+2, first and second order."""
    monkeypatch.setattr(attention, "QUERY_BLOCK", 5)
    q = _qkv(heads=6)[0].requires_grad_(True)
    k, v = (t.requires_grad_(True) for t in _qkv(heads=2, seed=1)[:2])
    out = sequence_attention(q, k, v, window, kernel=kernel)
    expected = naive_attention(q, k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1), window)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    # gradients, and gradients of gradients on the double-backward-safe kernels, agree too
    weights = torch.randn_like(out)
    second_order = kernel != "sdpa"
    grads = torch.autograd.grad((out * weights).sum(), (q, k, v), create_graph=second_order)
    ref = torch.autograd.grad((expected * weights).sum(), (q, k, v), create_graph=True)
    if not second_order:
        for a, b in zip(grads, ref):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
        return
    second = torch.autograd.grad(sum(g.pow(2).sum() for g in grads), (q, k, v))
    second_ref = torch.autograd.grad(sum(g.pow(2).sum() for g in ref), (q, k, v))
    for a, b in zip(grads + second, ref + second_ref):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_blockwise_path_is_used(monkeypatch):
    """With a small QUERY_BLOCK the sliding-window path runs many blocks, none wider than block + window."""
    monkeypatch.setattr(attention, "QUERY_BLOCK", 5)
    calls = []
    real_attend = attention.attend

    def recording_attend(q, k, v, mask, kernel, causal=False):
        calls.append((q.shape[-2], k.shape[-2]))
        return real_attend(q, k, v, mask, kernel, causal)

    monkeypatch.setattr(attention, "attend", recording_attend)
    q, k, v = _qkv()
    out = sequence_attention(q, k, v, 7, kernel="explicit")
    assert len(calls) == math.ceil(23 / 5)
    assert sum(tq for tq, _ in calls) == 23
    assert max(tk for _, tk in calls) <= 5 + 7 - 1
    torch.testing.assert_close(out, naive_attention(q, k, v, 7), atol=1e-12, rtol=0)


def test_long_sequence_memory_is_linear(monkeypatch):
    """T = 32768, window 128: a T×T fp32 score matrix would need 4 GiB; the blockwise path never builds it."""
    seq_len, window, hd = 32768, 128, 8
    biggest = []
    real_attend = attention.attend

    def recording_attend(q, k, v, mask, kernel, causal=False):
        biggest.append(q.shape[-2] * k.shape[-2])
        return real_attend(q, k, v, mask, kernel, causal)

    monkeypatch.setattr(attention, "attend", recording_attend)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 1, seq_len, hd, generator=g) for _ in range(3))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with torch.no_grad():
        out = sequence_attention(q, k, v, window, kernel="explicit")
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert out.shape == (1, 1, seq_len, hd) and torch.isfinite(out).all()
    # every score block is O(block·(block + window)), never O(T²)
    assert max(biggest) <= 1024 * (1024 + window)
    assert (rss_after - rss_before) * 1024 < 1 << 30  # peak grew by < 1 GiB (T×T fp32 = 4 GiB)
    # spot-check a few queries (including the first window and the very end) against direct softmax
    for p in (0, 1, 127, 128, 5000, seq_len - 1):
        lo = max(0, p - window + 1)
        scores = (q[0, 0, p].double() @ k[0, 0, lo:p + 1].double().T) / math.sqrt(hd)
        ref = scores.softmax(-1) @ v[0, 0, lo:p + 1].double()
        torch.testing.assert_close(out[0, 0, p].double(), ref, atol=1e-5, rtol=1e-5)
