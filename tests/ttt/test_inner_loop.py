"""The TTT-E2E inner loop: eval vs training forward, second-order meta-gradients, checkpointing,
the clipped SGD step and the inner-lr warm-up."""

from __future__ import annotations


import pytest
import torch
from torch import nn
from torch.func import functional_call

from lightning_ttt.config import ModelConfig
from lightning_ttt.model.transformer import Transformer
from lightning_ttt.ttt.objective import lm_loss
from lightning_ttt.ttt.update import clip_scale, effective_inner_lr, global_norm, make_update, sgd_step
from tiny_models import LLAMA_OPTIONS, randomize_weights  # tests/tiny_models.py


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_model(seed=0, std=0.5, **overrides) -> Transformer:
    settings = dict(method="e2e", vocab_size=11, d_model=8, n_layers=3, n_heads=2, mlp_hidden=8, suffix_len=2,
                    window=4, mini_batch=2, bos_id=1, eos_id=2, inner_lr=0.5, inner_clip=1e3)
    settings.update(overrides)
    torch.manual_seed(seed)
    return randomize_weights(Transformer(ModelConfig(**settings)).double(), std)


def tiny_batch(cfg, batch=2, seq_len=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    # random tokens other than BOS/EOS, then one document boundary: EOS, BOS -> one masked target
    ids = torch.randint(3, cfg.vocab_size, (batch, seq_len + 1), generator=g)
    ids[0, 0] = cfg.bos_id
    ids[1, 2], ids[1, 3] = cfg.eos_id, cfg.bos_id  # target index 2 of sequence 1 is masked
    inputs, targets = ids[:, :-1], ids[:, 1:]
    return inputs, targets, targets != cfg.bos_id


def update_of(model):
    return make_update(model.cfg)


def first_order_update(model):
    """A deliberately wrong update: the inner gradient is treated as a constant (first-order MAML)."""
    def update(fast, grads):
        return sgd_step(fast, {k: g.detach() for k, g in grads.items()}, lr=model.cfg.inner_lr,
                        clip=model.cfg.inner_clip)
    return update


# ---------------------------------------------------------------- evaluation == training forward
@pytest.mark.parametrize("kernel", ["auto", "explicit"])
def test_eval_ttt_matches_training_forward(kernel):
    model = tiny_model(attention_kernel=kernel, inner_clip=0.3, mini_batch=2, window=4)
    ids, targets, mask = tiny_batch(model.cfg, seq_len=8)
    train = lm_loss(model, ids, targets, mask, ttt=True, update=update_of(model), create_graph=True,
                    keep_history=True)
    with torch.no_grad():  # evaluation may run under no_grad: the inner gradient must still be taken
        ev = lm_loss(model, ids, targets, mask, ttt=True, update=update_of(model), create_graph=False,
                     keep_history=True)
    assert train.loss.requires_grad and not ev.loss.requires_grad
    torch.testing.assert_close(ev.token_nll, train.token_nll, atol=1e-10, rtol=0)
    torch.testing.assert_close(ev.chunk_loss, train.chunk_loss, atol=1e-10, rtol=0)
    torch.testing.assert_close(ev.inner.grad_norm, train.inner.grad_norm, atol=1e-10, rtol=0)
    assert set(ev.inner.fast) == set(train.inner.fast) == set(model.fast_weights())
    for name in train.inner.fast:
        torch.testing.assert_close(ev.inner.fast[name], train.inner.fast[name].detach(), atol=1e-10, rtol=0)
        assert ev.inner.fast[name].shape == (2, *model.fast_weights()[name].shape)
    # the fast weights really moved, differently per sequence, and the clip was active in some step
    w = train.inner.fast["blocks.1.prime.w1"]
    assert (w - model.blocks[1].prime.w1.weight).abs().max() > 1e-2
    assert (w[0] - w[1]).abs().max() > 1e-3
    assert (train.inner.grad_norm > 0.3).any()
    # TTT changes the loss after the first chunk, not on the first chunk
    plain = lm_loss(model, ids, targets, mask, ttt=False)
    torch.testing.assert_close(train.chunk_loss[:, 0], plain.chunk_loss[:, 0], atol=1e-10, rtol=0)
    assert (train.chunk_loss[:, 1:] - plain.chunk_loss[:, 1:]).abs().max() > 1e-4


def test_first_inner_step_is_clipped_sgd_with_joint_norm():
    """Φ_1 = Φ_0 − lr·clip(∇ loss_0) per sequence, the norm taken jointly over both suffix blocks."""
    lr, clip = 0.37, 0.2
    model = tiny_model(inner_lr=lr, inner_clip=clip)
    ids, targets, mask = tiny_batch(model.cfg)
    out = lm_loss(model, ids, targets, mask, ttt=True, update=update_of(model), create_graph=False, keep_history=True)
    names = list(model.fast_weights())
    assert len(names) == 6  # w1, w2, w3 of blocks 1 and 2
    for b in range(2):
        plain = lm_loss(model, ids[b:b + 1], targets[b:b + 1], mask[b:b + 1], ttt=False)
        grads = torch.autograd.grad(plain.chunk_loss[0, 0], [model.fast_weights()[n] for n in names])
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
        torch.testing.assert_close(out.inner.grad_norm[b, 0], norm.detach(), atol=1e-12, rtol=0)
        scale = 1.0 if norm < clip else clip / norm
        assert norm > clip  # the clipped branch
        for n, g in zip(names, grads):
            expected = model.fast_weights()[n] - lr * scale * g
            torch.testing.assert_close(out.inner.history[0][n][b], expected.detach(), atol=1e-12, rtol=0)


# ---------------------------------------------------------------- second-order meta-gradient
# a prime weight of the FIRST suffix block, an attention weight and the prime norm of the second
# suffix block, and a weight of the prefix block
TESTED = ("blocks.1.prime.w1.weight", "blocks.2.attn.wq.weight", "blocks.2.prime_norm.weight",
          "blocks.0.mlp.w2.weight")


class MetaLoss(nn.Module):
    """Wraps the meta objective as a ``forward`` so that ``functional_call`` can swap outer tensors."""

    def __init__(self, model: Transformer, update) -> None:
        super().__init__()
        self.model, self.update = model, update

    def forward(self, ids, targets, mask, checkpoint_chunks=False):
        return lm_loss(self.model, ids, targets, mask, ttt=True, update=self.update, create_graph=True,
                       checkpoint_chunks=checkpoint_chunks).loss


def meta_loss_of(model, update, ids, targets, mask, n_entries=12):
    """The meta loss as a function of ``n_entries`` scattered entries of each tensor in ``TESTED``
    (a subset keeps the finite-difference check fast); returns (fn, initial entries)."""
    wrapper = MetaLoss(model, update)
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(0)
    picks = []
    for name in TESTED:
        base = params[name].detach()
        idx = torch.randperm(base.numel(), generator=g)[:n_entries]
        picks.append((name, base, idx))

    def fn(*entries):
        swapped = {f"model.{name}": base.flatten().index_put((idx,), e).view(base.shape)
                   for (name, base, idx), e in zip(picks, entries)}
        return functional_call(wrapper, swapped, (ids, targets, mask))
    inputs = [base.flatten()[idx].clone().requires_grad_(True) for _, base, idx in picks]
    return fn, inputs


@pytest.mark.parametrize("kernel", ["auto", pytest.param("explicit", marks=pytest.mark.slow)])
@pytest.mark.parametrize("clip", [pytest.param(1e3, marks=pytest.mark.slow), 0.05])  # test-fast: clipped, auto kernel
def test_meta_gradient_gradcheck(kernel, clip):
    """float64 finite differences of the meta loss agree with autograd through the inner SGD steps."""
    model = tiny_model(attention_kernel=kernel, inner_clip=clip)
    ids, targets, mask = tiny_batch(model.cfg)
    with torch.no_grad():
        norms = lm_loss(model, ids, targets, mask, ttt=True, update=update_of(model)).inner.grad_norm
    assert norms.shape == (2, 3)
    if clip > 1:
        assert (norms < clip / 10).all()  # smooth, unclipped branch everywhere
    else:
        assert (norms > 2 * clip).all()  # clipped branch (derivative of the norm) everywhere
    fn, inputs = meta_loss_of(model, update_of(model), ids, targets, mask)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.slow  # a third gradcheck (about 2 s)
def test_meta_gradient_gradcheck_with_llama_options():
    """The same check with grouped-query attention, half RoPE, Llama-3 scaling, pre-norm only, no QK-norm,
    biases and an untied head (the SDPA math kernel with GQA in the second suffix block)."""
    model = tiny_model(**LLAMA_OPTIONS, inner_clip=0.05)
    ids, targets, mask = tiny_batch(model.cfg)
    fn, inputs = meta_loss_of(model, update_of(model), ids, targets, mask)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradcheck_catches_first_order_meta_gradient():
    """Dropping the second-order term (detached inner gradient) leaves the loss unchanged but changes
    the meta-gradient well above the tolerance; gradcheck then fails."""
    model = tiny_model(inner_clip=0.05)
    ids, targets, mask = tiny_batch(model.cfg)
    fn2, inputs = meta_loss_of(model, update_of(model), ids, targets, mask)
    fn1, _ = meta_loss_of(model, first_order_update(model), ids, targets, mask)
    loss2, loss1 = fn2(*inputs), fn1(*inputs)
    torch.testing.assert_close(loss1, loss2, atol=1e-12, rtol=0)
    g2 = torch.autograd.grad(loss2, inputs)
    g1 = torch.autograd.grad(loss1, inputs)
    for name, a, b in zip(TESTED, g1, g2):
        rel = ((a - b).abs().max() / b.abs().max()).item()
        assert rel > 1e-6, f"{name}: first-order meta-gradient indistinguishable ({rel:.2e})"
    assert not torch.autograd.gradcheck(fn1, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, raise_exception=False)


# ---------------------------------------------------------------- activation checkpointing
@pytest.mark.parametrize("kernel", ["auto", "explicit"])
def test_checkpoint_chunks_identical(kernel):
    model = tiny_model(attention_kernel=kernel, inner_clip=0.3)
    ids, targets, mask = tiny_batch(model.cfg, seq_len=8)
    params = [p for _, p in model.named_parameters()]
    results = []
    for ckpt in (False, True):
        out = lm_loss(model, ids, targets, mask, ttt=True, update=update_of(model), create_graph=True,
                      checkpoint_chunks=ckpt)
        results.append((out.loss.detach(), out.chunk_loss.detach(), torch.autograd.grad(out.loss, params)))
    (l0, c0, g0), (l1, c1, g1) = results
    torch.testing.assert_close(l1, l0, atol=1e-12, rtol=0)
    torch.testing.assert_close(c1, c0, atol=1e-12, rtol=0)
    for (name, _), a, b in zip(model.named_parameters(), g1, g0):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0, msg=name)
    assert any(g.abs().max() > 0 for g in g0)


# ---------------------------------------------------------------- the inner optimiser
def test_clip_scale():
    norm = torch.tensor([0.0, 0.5, 0.999, 1.0, 2.0, 10.0], dtype=torch.float64)
    expected = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.5, 0.1], dtype=torch.float64)
    torch.testing.assert_close(clip_scale(norm, 1.0), expected, atol=1e-15, rtol=0)
    torch.testing.assert_close(clip_scale(norm * 3, 3.0), expected, atol=1e-15, rtol=0)
    # differentiable in the clipped branch (d(c/n)/dn = -c/n²), flat below the clip
    n = torch.tensor([0.5, 4.0], dtype=torch.float64, requires_grad=True)
    (d,) = torch.autograd.grad(clip_scale(n, 2.0).sum(), n)
    torch.testing.assert_close(d, torch.tensor([0.0, -2.0 / 16.0], dtype=torch.float64), atol=1e-15, rtol=0)


def test_sgd_step_per_sequence():
    g = torch.Generator().manual_seed(0)
    w = {"a": torch.randn(2, 3, 4, generator=g, dtype=torch.float64),
         "b": torch.randn(2, 5, generator=g, dtype=torch.float64)}
    grads = {"a": torch.randn(2, 3, 4, generator=g, dtype=torch.float64),
             "b": torch.randn(2, 5, generator=g, dtype=torch.float64)}
    grads["a"][0] *= 0.01  # sequence 0: small gradient (below the clip); sequence 1: large
    grads["b"][0] *= 0.01
    lr, clip = 0.7, 1.0
    new, norm = sgd_step(w, grads, lr=lr, clip=clip)
    for b in range(2):
        n = torch.sqrt(grads["a"][b].pow(2).sum() + grads["b"][b].pow(2).sum())  # joint norm over tensors
        torch.testing.assert_close(norm[b], n, atol=1e-14, rtol=0)
        scale = 1.0 if n < clip else clip / n
        for k in w:
            torch.testing.assert_close(new[k][b], w[k][b] - lr * scale * grads[k][b], atol=1e-14, rtol=0)
        # each sequence alone gives the same result as in the batch
        alone, norm_alone = sgd_step({k: v[b:b + 1] for k, v in w.items()},
                                     {k: v[b:b + 1] for k, v in grads.items()}, lr=lr, clip=clip)
        torch.testing.assert_close(norm_alone[0], norm[b], atol=1e-14, rtol=0)
        for k in w:
            torch.testing.assert_close(alone[k][0], new[k][b], atol=1e-14, rtol=0)
    assert norm[0] < clip < norm[1]
    torch.testing.assert_close(global_norm(grads), norm, atol=1e-14, rtol=0)


def test_effective_inner_lr_warmup():
    lr, init, warm = 1.0, 0.1, 10
    assert effective_inner_lr(lr, init, warm, 0) == pytest.approx(init + (lr - init) / warm)
    assert effective_inner_lr(lr, init, warm, 2) == pytest.approx(0.1 + 0.9 * 0.3)
    assert effective_inner_lr(lr, init, warm, warm - 2) < lr
    assert effective_inner_lr(lr, init, warm, warm - 1) == pytest.approx(lr)
    assert effective_inner_lr(lr, init, warm, 10 * warm) == pytest.approx(lr)
    assert effective_inner_lr(lr, init, warm, None) == lr
    assert effective_inner_lr(lr, init, 0, 0) == lr
    assert effective_inner_lr(2.0, 0.5, 4, 0) == pytest.approx(0.5 + 1.5 / 4)
    values = [effective_inner_lr(lr, init, warm, s) for s in range(warm)]
    assert values == sorted(values) and len(set(values)) == warm  # strictly increasing during warm-up


def test_fully_masked_chunk_keeps_meta_gradient_finite():
    """A chunk whose targets are all masked has loss 0 and gradient 0 for every parameter value, so it
    contributes nothing (README: max(Σ mask, 1e-10)); the outer gradient must stay finite."""
    model = tiny_model(suffix_len=1, n_layers=2)
    ids, targets, mask = tiny_batch(model.cfg, seq_len=4)
    mask = mask.clone()
    mask[0, :2] = False  # chunk 0 of sequence 0: no valid target
    out = lm_loss(model, ids, targets, mask, ttt=True, update=update_of(model), create_graph=True)
    assert out.inner.grad_norm[0, 0] == 0 and torch.isfinite(out.loss)
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)


def test_global_norm_reports_non_finite_gradients_as_non_finite():
    """A NaN or infinite inner gradient shows in the norm (``ttt/inner_grad_norm_*``), never as 0; a zero
    gradient still has norm 0 and finite ones their exact L2 norm."""
    grads = {"a": torch.tensor([[3.0, 0.0], [float("nan"), 1.0], [0.0, 0.0], [float("inf"), 0.0]], dtype=torch.float64),
             "b": torch.tensor([[4.0], [0.0], [0.0], [1.0]], dtype=torch.float64)}
    norm = global_norm(grads)
    assert norm[0] == 5.0 and norm[2] == 0.0
    assert torch.isnan(norm[1]) and torch.isinf(norm[3])
    _, reported = sgd_step({k: torch.zeros_like(v) for k, v in grads.items()}, grads, lr=0.1, clip=1.0)
    assert torch.isnan(reported[1]) and not torch.isfinite(reported[3])
