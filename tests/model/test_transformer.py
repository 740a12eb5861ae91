"""The Transformer: whole-sequence vs chunked execution, RoPE, tied head, parameter counts."""

from __future__ import annotations

import pytest
import torch

import lightning_ttt.model.attention as attention
from lightning_ttt.config import ModelConfig
from lightning_ttt.model.layers import rope
from lightning_ttt.model.cache import empty_caches
from lightning_ttt.model.checkpointing import checkpoint_blocks
from lightning_ttt.model.transformer import Transformer
from lightning_ttt.ttt.objective import lm_loss
from lightning_ttt.ttt.update import global_norm, make_update
from tiny_models import LLAMA_OPTIONS, randomize_weights  # tests/tiny_models.py


pytestmark = pytest.mark.usefixtures("single_thread")


def small_model(seed=0, std=0.3, **overrides) -> Transformer:
    settings = dict(method="e2e", vocab_size=37, d_model=16, n_layers=3, n_heads=2, mlp_hidden=24, suffix_len=1,
                    window=6, mini_batch=4, bos_id=1, eos_id=2)
    settings.update(overrides)
    cfg = ModelConfig(**settings)
    torch.manual_seed(seed)
    return randomize_weights(Transformer(cfg).double(), std)


def _batch(cfg, batch=2, seq_len=20, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), generator=g)
    ids[0, 7] = cfg.bos_id  # a document boundary: one masked target
    inputs, targets = ids[:, :-1], ids[:, 1:]
    return inputs, targets, targets != cfg.bos_id


@pytest.mark.parametrize("options", [{}, LLAMA_OPTIONS], ids=["paper", "llama"])
@pytest.mark.parametrize("kernel", ["sdpa", "explicit"])
@pytest.mark.parametrize("method", ["e2e", "swa"])
def test_whole_sequence_equals_chunked_with_kv_caches(monkeypatch, kernel, method, options):
    """SWA over the whole sequence (form i) == every block chunk by chunk with zero-initialised caches (form ii)."""
    monkeypatch.setattr(attention, "QUERY_BLOCK", 5)  # blockwise path with a ragged last block
    model = small_model(method=method, suffix_len=1 if method == "e2e" else 0, attention_kernel=kernel, **options)
    cfg = model.cfg
    ids, _, _ = _batch(cfg, seq_len=20)  # 5 chunks of 4; window 6 > chunk, not a multiple of it
    with torch.no_grad():
        whole = model(ids)
        h = model.embed(ids)
        caches = empty_caches(cfg, cfg.n_layers, 2, cfg.window, h.dtype, h.device)
        outs = []
        for start in range(0, ids.shape[1], cfg.mini_batch):
            x = h[:, start:start + cfg.mini_batch]
            for i, block in enumerate(model.blocks):
                x, caches[i] = block.forward_chunk(x, caches[i], start, cfg.window, kernel, None)
            outs.append(x)
        chunked = torch.cat(outs, dim=1)
    assert whole.shape == (2, 20, cfg.d_model)
    torch.testing.assert_close(chunked, whole, atol=1e-10, rtol=0)
    # the sliding window really matters here: full causal attention gives something else
    with torch.no_grad():
        full = Transformer(cfg.replace(method="fa", suffix_len=0)).double()
        full.load_state_dict({k: v for k, v in model.state_dict().items() if "prime" not in k})
        assert (full(ids) - whole).abs().max() > 1e-3


@pytest.mark.parametrize("options", [{}, LLAMA_OPTIONS], ids=["paper", "llama"])
@pytest.mark.parametrize("create_graph", [False, True])
def test_ttt_with_identity_update_equals_no_ttt(create_graph, options):
    model = small_model(**options)
    ids, targets, mask = _batch(model.cfg)
    identity = lambda fast, grads: (fast, global_norm(grads))
    plain = lm_loss(model, ids, targets, mask, ttt=False)
    ttt = lm_loss(model, ids, targets, mask, ttt=True, update=identity, create_graph=create_graph)
    assert ttt.chunk_loss.shape == plain.chunk_loss.shape == (2, 5)
    torch.testing.assert_close(ttt.chunk_loss, plain.chunk_loss, atol=1e-10, rtol=0)
    torch.testing.assert_close(ttt.token_nll, plain.token_nll, atol=1e-10, rtol=0)
    if create_graph:  # with Φ never moving, the meta-gradient is the ordinary gradient
        params = list(model.parameters())
        g_plain = torch.autograd.grad(plain.loss, params)
        g_ttt = torch.autograd.grad(ttt.loss, params)
        for (name, _), a, b in zip(model.named_parameters(), g_ttt, g_plain):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0, msg=name)


def test_loss_is_mean_of_chunk_means():
    model = small_model()
    ids, targets, mask = _batch(model.cfg)
    out = lm_loss(model, ids, targets, mask, ttt=False)
    nll = out.token_nll
    assert not mask.all()  # one chunk has 3 valid targets instead of 4
    for b in range(2):
        for c in range(5):
            sl = slice(4 * c, 4 * c + 4)
            expected = (nll[b, sl] * mask[b, sl]).sum() / mask[b, sl].sum()
            torch.testing.assert_close(out.chunk_loss[b, c], expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.loss, out.chunk_loss.mean(), atol=1e-12, rtol=0)
    # token NLL is unmasked: the masked target still has its own NLL
    logp = model.logits(model(ids)).log_softmax(-1)
    torch.testing.assert_close(nll, -logp.gather(-1, targets[..., None])[..., 0], atol=1e-12, rtol=0)


def test_rope_is_interleaved_pairs():
    g = torch.Generator().manual_seed(3)
    hd, theta = 8, 10_000.0
    x = torch.randn(2, 3, 5, hd, generator=g, dtype=torch.float64)
    pos = torch.tensor([0, 1, 7, 100, 4096])
    z = torch.complex(x[..., 0::2], x[..., 1::2])  # pair j = (2j, 2j+1)
    freq = theta ** (-torch.arange(hd // 2, dtype=torch.float64) * 2 / hd)
    rotated = z * torch.polar(torch.ones(5, hd // 2, dtype=torch.float64), pos[:, None].double() * freq)
    expected = torch.stack((rotated.real, rotated.imag), dim=-1).flatten(-2)
    torch.testing.assert_close(rope(x, pos, theta), expected, atol=1e-12, rtol=0)
    # not rotate_half: a vector with only dims 0 and 1 set stays in dims 0 and 1
    e = torch.zeros(1, hd, dtype=torch.float64)
    e[0, 0] = 1.0
    out = rope(e, torch.tensor([3]), theta)
    assert out[0, 2:].abs().max() == 0 and out[0, 1].abs() > 0.1
    # float32 input comes back float32
    assert rope(x.float(), pos, theta).dtype == torch.float32


def test_tied_embeddings():
    model = small_model()
    names = [n for n, _ in model.named_parameters()]
    assert not any("head" in n for n in names)
    h = torch.randn(2, 5, model.cfg.d_model, dtype=torch.float64)
    w = model.final_norm.weight
    normed = w * h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + model.cfg.norm_eps)
    torch.testing.assert_close(model.logits(h), normed @ model.embed.weight.T, atol=1e-12, rtol=0)
    model.logits(h).sum().backward()
    assert model.embed.weight.grad is not None and model.embed.weight.grad.abs().sum() > 0


# Paper §1.3 (reference/paper.md): total params in millions, FA / E2E, and the prime (fast) params.
PAPER_COUNTS = {
    "125m": (183.5, 184.4, 11.5),
    "350m": (439.7, 444.4, 42.5),
    "760m": (876.6, 883.7, 92.0),
    "1b": (1458.0, 1468.0, 160.4),
    "3b": (2866.0, 2898.0, 346.0),
}


@pytest.mark.parametrize("preset", list(PAPER_COUNTS))
def test_parameter_counts_match_paper(preset):
    fa_m, e2e_m, prime_m = PAPER_COUNTS[preset]
    tol = 0.05 if preset in ("125m", "350m", "760m") else 0.5  # table rounds to 0.1M or 0.001B
    with torch.device("meta"):
        fa = Transformer(ModelConfig.from_preset(preset, "fa"))
        swa = Transformer(ModelConfig.from_preset(preset, "swa"))
        e2e = Transformer(ModelConfig.from_preset(preset, "e2e"))
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731 - the tied head counts once
    assert abs(count(fa) / 1e6 - fa_m) <= tol
    assert count(swa) == count(fa)
    assert abs(count(e2e) / 1e6 - e2e_m) <= tol
    prime = sum(w.numel() for w in e2e.fast_weights().values())
    assert abs(prime / 1e6 - prime_m) <= 0.05
    assert len(e2e.fast_weights()) == 3 * e2e.cfg.suffix_len
    assert fa.fast_weights() == {}


@pytest.mark.parametrize("offload", [False, True], ids=["on-device", "offloaded-inputs"])
@pytest.mark.parametrize("method", ["fa", "e2e"])
def test_block_checkpointing_gives_the_same_loss_and_gradients(method: str, offload: bool) -> None:
    """Activation checkpointing per whole-sequence block is a policy applied to the built model: same
    function, same gradients, same state-dict keys, and the blocks really run again in the backward pass
    (also when the saved inputs are held in host memory)."""
    results = []
    for recompute in (False, True):
        model = small_model(method=method, suffix_len=1 if method == "e2e" else 0)
        keys = list(model.state_dict())
        if recompute:
            checkpoint_blocks(checkpoint_blocks(model, offload), offload)  # idempotent
            assert list(model.state_dict()) == keys
        calls = []
        model.blocks[0].attn.register_forward_hook(lambda *_: calls.append(1))
        ids = torch.randint(0, 37, (2, 13), generator=torch.Generator().manual_seed(1))
        mask = torch.ones(2, 12, dtype=torch.bool)
        out = lm_loss(model, ids[:, :-1], ids[:, 1:], mask, ttt=method == "e2e", create_graph=True,
                      update=make_update(model.cfg))
        out.loss.backward()
        assert len(calls) == (2 if recompute else 1)  # forward, and the recomputation in the backward pass
        with torch.no_grad():  # evaluation runs the wrapped blocks too
            hidden = model(ids)
        results.append((out.loss.detach(), [p.grad.clone() for p in model.parameters()], hidden))
    (loss_a, grads_a, hidden_a), (loss_b, grads_b, hidden_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=1e-12)
    torch.testing.assert_close(hidden_b, hidden_a, rtol=0, atol=1e-12)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)
