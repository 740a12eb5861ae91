"""KV caches of rotated keys: the same attention as re-rotating the whole cache every chunk, ring buffers
that wrap, full-attention chunks without a mask, and cached RoPE tables."""

from __future__ import annotations

import pytest
import torch

import lightning_ttt.model.layers as layers
from lightning_ttt.config import ModelConfig
from lightning_ttt.model.attention import attend, chunk_attention, window_mask
from lightning_ttt.model.cache import KVCache, empty_caches
from lightning_ttt.model.layers import Rotary, rope
from lightning_ttt.model.transformer import Transformer
from tiny_models import LLAMA_OPTIONS, randomize_weights  # tests/tiny_models.py


pytestmark = pytest.mark.usefixtures("single_thread")


def model_of(method="swa", seed=0, **overrides) -> Transformer:
    settings = dict(method=method, vocab_size=29, d_model=16, n_layers=2, n_heads=4, mlp_hidden=24,
                    suffix_len=1 if method == "e2e" else 0, window=6, mini_batch=4, bos_id=1, eos_id=2)
    torch.manual_seed(seed)
    return randomize_weights(Transformer(ModelConfig(**{**settings, **overrides})).double(), 0.3)


def old_forward_chunk(attn, x, cache, start, window, kernel):
    """The former formulation: unrotated keys cached; every chunk re-rotates [cache ; chunk] with local
    positions 0..W+C-1 and the queries with W..W+C-1."""
    q, k_new, v_new = attn._heads(x)
    k, v = torch.cat([cache[0], k_new], dim=2), torch.cat([cache[1], v_new], dim=2)
    rows, chunk = cache[0].shape[2], x.shape[1]
    local = torch.arange(rows + chunk)
    lo = max(0, rows - start)
    mask = window_mask(local[rows:] + start - rows, local[lo:] + start - rows, window)
    rot = lambda t, pos: rope(t, pos, attn.rotary.theta, attn.rotary.half, attn.rotary.scaling)  # noqa: E731
    out = attend(rot(q, local[rows:]), rot(k[:, :, lo:], local[lo:]), v[:, :, lo:], mask, kernel)
    return attn._merge(out), (k[:, :, -rows:], v[:, :, -rows:])


@pytest.mark.parametrize("options", [{}, dict(LLAMA_OPTIONS, n_kv_heads=2)], ids=["paper", "llama-gqa"])
@pytest.mark.parametrize("kernel", ["sdpa", "explicit"])
def test_rotated_key_cache_equals_rerotating_the_cache(options, kernel):
    """Keys rotated once at absolute positions (far from 0 here) == the old per-chunk re-rotation, float64."""
    model = model_of(**options)
    attn, cfg = model.blocks[0].attn, model.cfg
    g = torch.Generator().manual_seed(2)
    start, rows = 5000, cfg.window
    # a cache already holding positions start-W .. start-1 (unrotated for the old form, rotated for the new)
    old = tuple(torch.randn(2, cfg.kv_heads, rows, cfg.head_dim, generator=g, dtype=torch.float64) for _ in range(2))
    new = KVCache(attn.rotary(old[0], start - rows), old[1])
    with torch.no_grad():
        for chunk in (4, 1, 3, 7, 4):
            x = torch.randn(2, chunk, cfg.d_model, generator=g, dtype=torch.float64)
            want, old = old_forward_chunk(attn, x, old, start, cfg.window, kernel)
            got, new = attn.forward_chunk(x, new, start, cfg.window, kernel)
            torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
            start += chunk
    # and from an empty cache at position 0 (slots before position 0 masked), through a whole model
    ids = torch.randint(0, cfg.vocab_size, (2, 17), generator=g)
    with torch.no_grad():
        h_old = h_new = model.embed(ids)
        for block in model.blocks:
            zeros = empty_caches(cfg, 1, 2, rows, torch.float64, "cpu")[0]
            caches_old, cache_new, outs_old, outs_new = (zeros.k, zeros.v), zeros, [], []
            for pos in range(0, 17, 4):
                x = block.seq_norm(h_old[:, pos:pos + 4])
                out, caches_old = old_forward_chunk(block.attn, x, caches_old, pos, cfg.window, kernel)
                outs_old.append(out)
                out, cache_new = block.attn.forward_chunk(block.seq_norm(h_new[:, pos:pos + 4]), cache_new, pos,
                                                          cfg.window, kernel)
                outs_new.append(out)
            torch.testing.assert_close(torch.cat(outs_new, 1), torch.cat(outs_old, 1), atol=1e-12, rtol=0)
            h_old = h_new = block(h_new, cfg.window, kernel)


@pytest.mark.parametrize("window", [5, None])
def test_ring_cache_wraps_across_many_chunks(window):
    """A ring of ``rows`` slots written in place, chunks of every size (1 .. > rows), 100 positions: the same
    attention output as the ordered (concatenating) cache, and slot p % rows holds position p."""
    model = model_of(n_kv_heads=2)
    attn, cfg = model.blocks[0].attn, model.cfg
    rows = 5 if window else 100
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 100, cfg.d_model, generator=g, dtype=torch.float64)
    ring = empty_caches(cfg, 1, 1, rows, torch.float64, "cpu", ring=True)[0]
    ordered = empty_caches(cfg, 1, 1, rows if window else 100, torch.float64, "cpu")[0]
    sizes = [1, 1, 2, 3, 5, 6, 1, 7, 4, 11, 1, 1, 1, 9, 13, 2, 1, 8, 3, 1, 5, 1, 13]
    assert sum(sizes) == 100
    start = 0
    with torch.no_grad():
        for size in sizes:
            piece = x[:, start:start + size]
            got, ring = attn.forward_chunk(piece, ring, start, window, "sdpa")
            want, ordered = attn.forward_chunk(piece, ordered, start, window, "explicit")
            torch.testing.assert_close(got, want, atol=1e-12, rtol=0, msg=f"chunk at {start}")
            start += size
            # every slot holds the rotated key of the newest position p < start with p % rows == slot
            _, k, _ = attn._heads(x[:, :start])
            for slot in range(min(rows, start)):
                p = slot + rows * ((start - 1 - slot) // rows)
                torch.testing.assert_close(ring.k[:, :, slot], attn.rotary(k[:, :, p:p + 1], p)[:, :, 0],
                                           atol=1e-12, rtol=0)
    with pytest.raises(RuntimeError, match="in place"):  # gradients cannot flow through a buffer written in place
        attn.forward_chunk(x[:, :2].requires_grad_(True), ring, start, window, "sdpa")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("heads", [(4, 4), (6, 2)], ids=["mha", "gqa"])
def test_full_attention_chunk_without_mask_equals_masked(dtype, heads):
    """[older keys ; own keys] merged by log-sum-exp (no [C, tk] mask) == one masked softmax."""
    h, hkv = heads
    g = torch.Generator().manual_seed(4)
    past, chunk = 23, 9
    q = torch.randn(2, h, chunk, 8, generator=g, dtype=dtype)
    k, v = (torch.randn(2, hkv, past + chunk, 8, generator=g, dtype=dtype) for _ in range(2))
    mask = window_mask(torch.arange(past, past + chunk), torch.arange(past + chunk), None)
    want = attend(q, k, v, mask, "explicit")
    got = chunk_attention(q, k, v, mask, past, "sdpa", causal_past=True)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, atol=1e-12 if dtype == torch.float64 else 2e-6, rtol=0)


def test_rotary_tables_are_cached_and_equal_direct_rope(monkeypatch):
    """The cached tables (grown on demand) and positions beyond the cache give the direct rotation."""
    monkeypatch.setattr(layers, "_TABLES", {})
    monkeypatch.setattr(layers, "_FAR_TABLES", {})
    monkeypatch.setattr(layers, "MAX_CACHED_POSITIONS", 4096)
    g = torch.Generator().manual_seed(5)
    for half, scaling in ((False, None), (True, layers.Llama3Scaling(8.0, 1.0, 4.0, 64))):
        rotary = Rotary(500.0, half, scaling)
        # beyond the cache: a moving window from a multiple of 2048 (9000 and 10230 share one; 12000 moves it),
        # and a call longer than half the window computed directly
        for start, length in ((0, 10), (1000, 30), (2000, 100), (4090, 12), (9000, 5), (10230, 2000), (12000, 7),
                              (20000, 3000)):
            x = torch.randn(2, 3, length, 16, generator=g, dtype=torch.float64)
            direct = rope(x, torch.arange(start, start + length), 500.0, half, scaling)
            torch.testing.assert_close(rotary(x, start), direct, atol=1e-12, rtol=0)
    assert {table[0].shape[0] for table in layers._TABLES.values()} == {4096}  # grown to the cap, not beyond
    assert {(base, table.shape[0]) for base, table, _ in layers._FAR_TABLES.values()} == {(10240, 4096)}
    with torch.inference_mode():  # tables made under inference mode still serve later autograd graphs
        layers._TABLES.clear()
        Rotary(10.0)(torch.zeros(1, 4, 8))
    x = torch.randn(1, 4, 8, requires_grad=True)
    Rotary(10.0)(x).sum().backward()
    assert x.grad is not None
