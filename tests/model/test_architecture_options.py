"""The Llama-family options of the model: each one does what it says and is off by default."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_ttt.config import ModelConfig
from lightning_ttt.model.cache import empty_caches
from lightning_ttt.model.layers import Llama3Scaling, rope
from lightning_ttt.model.transformer import Transformer
from tiny_models import LLAMA_OPTIONS, randomize_weights  # tests/tiny_models.py


pytestmark = pytest.mark.usefixtures("single_thread")

BASE = dict(method="swa", vocab_size=23, d_model=16, n_layers=2, n_heads=4, mlp_hidden=24, suffix_len=0,
            window=6, mini_batch=4, bos_id=1, eos_id=2)


def model_of(seed=0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return randomize_weights(Transformer(ModelConfig(**{**BASE, **overrides})).double(), std=0.3)


def ids_of(cfg, seq_len=14, seed=1):
    return torch.randint(0, cfg.vocab_size, (2, seq_len), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kernel", ["sdpa", "explicit"])
@pytest.mark.parametrize("method", ["fa", "swa"])
def test_grouped_query_attention_equals_repeated_key_value_heads(kernel, method):
    """n_kv_heads=2 of 4 query heads == ordinary attention whose k/v projections repeat each kv head
    for its group of query heads (heads 0,1 share kv head 0; heads 2,3 share kv head 1)."""
    gqa = model_of(method=method, n_kv_heads=2, attention_kernel=kernel)
    full = Transformer(gqa.cfg.replace(n_kv_heads=None)).double()
    state = gqa.state_dict()
    hd = gqa.cfg.head_dim
    for name, w in list(state.items()):
        if name.endswith(("attn.wk.weight", "attn.wv.weight")):  # [Hkv·hd, D] -> [H·hd, D]
            state[name] = w.unflatten(0, (2, hd)).repeat_interleave(2, dim=0).flatten(0, 1)
    full.load_state_dict(state)
    ids = ids_of(gqa.cfg)
    with torch.no_grad():
        torch.testing.assert_close(gqa(ids), full(ids), atol=1e-12, rtol=0)
    assert gqa.blocks[0].attn.wk.weight.shape == (2 * hd, 16)
    assert empty_caches(gqa.cfg, 1, 3, gqa.cfg.window, torch.float64, "cpu")[0].k.shape == (3, 2, gqa.cfg.window, hd)


def test_rope_half_layout_rotates_dims_j_and_j_plus_half():
    g = torch.Generator().manual_seed(3)
    hd, theta = 8, 10_000.0
    x = torch.randn(2, 3, 5, hd, generator=g, dtype=torch.float64)
    pos = torch.tensor([0, 1, 7, 100, 4096])
    z = torch.complex(x[..., : hd // 2], x[..., hd // 2:])  # pair j = (j, j + hd/2)
    freq = theta ** (-torch.arange(hd // 2, dtype=torch.float64) * 2 / hd)
    rotated = z * torch.polar(torch.ones(5, hd // 2, dtype=torch.float64), pos[:, None].double() * freq)
    expected = torch.cat((rotated.real, rotated.imag), dim=-1)
    torch.testing.assert_close(rope(x, pos, theta, half=True), expected, atol=1e-12, rtol=0)
    # the same rotation as the interleaved layout on permuted dims
    perm = torch.stack((torch.arange(hd // 2), torch.arange(hd // 2) + hd // 2), dim=-1).flatten()  # 0 4 1 5 ...
    torch.testing.assert_close(rope(x[..., perm], pos, theta)[..., perm.argsort()], expected, atol=1e-12, rtol=0)


def test_llama3_scaling_keeps_short_stretches_long_and_blends_between():
    hd, theta = 64, 500_000.0
    inv_freq = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    s = Llama3Scaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_positions=8192)
    scaled = s.apply(inv_freq)
    wavelength = 2 * math.pi / inv_freq
    short, long = wavelength < 8192 / 4, wavelength > 8192 / 1
    middle = ~short & ~long
    assert short.any() and long.any() and middle.any()
    torch.testing.assert_close(scaled[short], inv_freq[short], atol=0, rtol=0)
    torch.testing.assert_close(scaled[long], inv_freq[long] / 8, atol=0, rtol=1e-15)
    assert ((scaled[middle] < inv_freq[middle]) & (scaled[middle] > inv_freq[middle] / 8)).all()
    assert (scaled.diff() < 0).all()  # still strictly decreasing: the blend is continuous and monotone
    torch.testing.assert_close(Llama3Scaling(1.0, 1.0, 4.0, 8192).apply(inv_freq), inv_freq, atol=0, rtol=1e-15)
    # rope() uses the scaled frequencies: a position-1 rotation of pair 0 and of the last pair
    x = torch.zeros(1, hd, dtype=torch.float64)
    x[0, 0] = x[0, hd - 2] = 1.0
    out = rope(x, torch.tensor([1]), theta, scaling=s)
    torch.testing.assert_close(out[0, [1, hd - 1]], scaled[[0, -1]].sin(), atol=1e-15, rtol=0)


def test_pre_norm_only_block_adds_each_sublayer_unnormalised():
    model = model_of(post_norm=False, method="e2e", n_layers=2, suffix_len=1)
    names = [n for n, _ in model.named_parameters()]
    assert not any("post_norm" in n for n in names) and any("prime_norm" in n for n in names)
    block, x = model.blocks[1], torch.randn(2, 5, 16, dtype=torch.float64)
    with torch.no_grad():
        h = x + block.attn(block.seq_norm(x), block_window := 6, "sdpa")
        h = h + block.prime(block.prime_norm(h))
        expected = h + block.mlp(block.ffn_norm(h))
        torch.testing.assert_close(block(x, block_window, "sdpa"), expected, atol=1e-12, rtol=0)


def test_qk_norm_off_has_no_head_norms():
    on, off = model_of(), model_of(qk_norm=False)
    assert any(".q_norm" in n for n, _ in on.named_parameters())
    assert not any(".q_norm" in n or ".k_norm" in n for n, _ in off.named_parameters())
    ids = ids_of(off.cfg)
    off_state = off.state_dict()
    on.load_state_dict({**on.state_dict(), **off_state})
    with torch.no_grad():  # unit QK-norm weights are not an identity: the two really differ
        for block in on.blocks:
            block.attn.q_norm.weight.fill_(1.0)
            block.attn.k_norm.weight.fill_(1.0)
        assert (on(ids) - off(ids)).abs().max() > 1e-3


def test_untied_head_uses_its_own_matrix():
    model = model_of(tie_embeddings=False)
    assert model.lm_head is not None and model.lm_head.weight.shape == (23, 16)
    h = torch.randn(2, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(model.logits(h), model.final_norm(h) @ model.lm_head.weight.T, atol=1e-12, rtol=0)
    model.logits(h).sum().backward()
    assert model.embed.weight.grad is None and model.lm_head.weight.grad.abs().sum() > 0


def test_qkv_bias_is_added_and_starts_at_zero():
    cfg = ModelConfig(**{**BASE, "qkv_bias": True})
    fresh = Transformer(cfg)
    attn = fresh.blocks[0].attn
    assert attn.wo.bias is None
    for proj in (attn.wq, attn.wk, attn.wv):
        assert proj.bias is not None and torch.equal(proj.bias, torch.zeros_like(proj.bias))
    model = model_of(qkv_bias=True)
    ids = ids_of(model.cfg)
    with torch.no_grad():
        before = model(ids)
        model.blocks[0].attn.wv.bias.add_(0.5)
        assert (model(ids) - before).abs().max() > 1e-3


def test_head_width_and_prime_width_settings():
    model = model_of(method="e2e", suffix_len=1, head_dim_override=6, n_kv_heads=1, prime_hidden=10)
    attn = model.blocks[1].attn
    assert (attn.wq.weight.shape, attn.wk.weight.shape, attn.wo.weight.shape) == ((24, 16), (6, 16), (16, 24))
    assert model.blocks[1].prime.w1.weight.shape == (10, 16) and model.blocks[1].mlp.w1.weight.shape == (24, 16)
    with torch.no_grad():
        assert model(ids_of(model.cfg)).shape == (2, 14, 16)


def test_defaults_are_the_papers_architecture():
    cfg = ModelConfig(**BASE)
    assert (cfg.kv_heads, cfg.head_dim, cfg.prime_width) == (4, 4, 24)
    names = {n for n, _ in Transformer(cfg).named_parameters()}
    assert {"blocks.0.seq_post_norm.weight", "blocks.0.attn.q_norm.weight"} <= names
    assert not any(n.endswith(".bias") or n.startswith("lm_head") for n in names)


def test_all_options_together_run_and_learn():
    model = model_of(method="e2e", n_heads=2, suffix_len=1, **LLAMA_OPTIONS)
    ids = ids_of(model.cfg, seq_len=12)
    loss = torch.nn.functional.cross_entropy(model.logits(model(ids)).flatten(0, 1), ids.flatten())
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "prime" not in n)


@pytest.mark.parametrize("overrides, message", [
    (dict(n_kv_heads=3), r"n_kv_heads=3 must be >= 1 and divide n_heads=4"),
    (dict(n_kv_heads=0), r"n_kv_heads=0 must be >= 1"),
    (dict(head_dim_override=5), r"head_dim_override=5 must be an even number"),
    (dict(rope_layout="rotate"), r"rope_layout='rotate' is unknown; expected one of interleaved, half"),
    (dict(rope_scaling="yarn"), r"rope_scaling='yarn' is unknown; expected one of none, llama3"),
    (dict(rope_scaling="llama3", rope_low_freq_factor=4.0, rope_high_freq_factor=1.0),
     r"rope_low_freq_factor=4.0 must be > 0 and below rope_high_freq_factor=1.0"),
    (dict(prime_hidden=0), r"prime_hidden=0 must be >= 1"),
    (dict(norm_eps=0.0), r"norm_eps=0.0 must be > 0"),
])
def test_invalid_options_are_one_line_errors(overrides, message):
    with pytest.raises(ValueError, match=message) as err:
        ModelConfig(**{**BASE, **overrides})
    assert "\n" not in str(err.value)


def test_head_width_override_lifts_divisibility():
    ModelConfig(**{**BASE, "d_model": 18, "head_dim_override": 8})  # 18 is not divisible by 4 heads: fine
    with pytest.raises(ValueError, match="d_model=18 must be divisible by n_heads=4"):
        ModelConfig(**{**BASE, "d_model": 18})
