"""Checkpointing through time (model.config.checkpoint_chunks): every schedule gives the gradients of
the plain loop, and the sqrt and log schedules keep as few chunk-boundary states as they promise."""

from __future__ import annotations

import math

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef

import lightning_ttt.ttt.inner_loop as inner_loop
from lightning_ttt.config import ModelConfig
from lightning_ttt.model.transformer import Transformer
from lightning_ttt.ttt.objective import lm_loss
from lightning_ttt.ttt.schedule import chunk_passes, forward_states, peak_states, plan
from lightning_ttt.ttt.update import make_update
from tiny_models import randomize_weights  # tests/tiny_models.py


pytestmark = pytest.mark.usefixtures("single_thread")
SCHEDULES = ("each", "sqrt", "log")


def tiny_model(suffix_len: int, dtype=torch.float64) -> Transformer:
    cfg = ModelConfig(method="e2e", vocab_size=11, d_model=8, n_layers=suffix_len + 1, n_heads=2, mlp_hidden=8,
                      suffix_len=suffix_len, window=4, mini_batch=2, bos_id=1, eos_id=2, inner_lr=0.5, inner_clip=0.3)
    torch.manual_seed(0)
    return randomize_weights(Transformer(cfg).to(dtype), 0.5)


def tiny_batch(cfg: ModelConfig, n_chunks: int, batch: int = 2):
    """Random tokens of n_chunks mini-batches; the last sequence starts a new document mid-way (one masked target)."""
    seq_len = n_chunks * cfg.mini_batch
    g = torch.Generator().manual_seed(n_chunks)
    ids = torch.randint(3, cfg.vocab_size, (batch, seq_len + 1), generator=g)
    ids[-1, seq_len // 2] = cfg.bos_id
    inputs, targets = ids[:, :-1], ids[:, 1:]
    return inputs, targets, targets != cfg.bos_id


def meta_gradients(model: Transformer, n_chunks: int, schedule: str):
    ids, targets, mask = tiny_batch(model.cfg, n_chunks)
    out = lm_loss(model, ids, targets, mask, ttt=True, update=make_update(model.cfg), create_graph=True,
                  checkpoint_chunks=schedule)
    params = [p for p in model.parameters()]
    return out.chunk_loss.detach(), torch.autograd.grad(out.loss, params)


SLOW = pytest.mark.slow


@pytest.mark.parametrize("n_chunks, suffix_len", [(1, 1), (2, 1), (5, 1), (8, 1), pytest.param(13, 1, marks=SLOW),
                                                  (1, 3), (2, 3), (5, 3), pytest.param(8, 3, marks=SLOW),
                                                  pytest.param(13, 3, marks=SLOW)])
def test_every_schedule_gives_the_gradients_of_the_plain_loop(n_chunks, suffix_len):
    """float64: the loss and the meta-gradient of every outer parameter (prefix, suffix attention and MLPs,
    prime MLPs, norms, embedding) equal those without checkpointing."""
    model = tiny_model(suffix_len)
    losses, grads = meta_gradients(model, n_chunks, "none")
    assert all(g.abs().max() > 0 for g in grads)  # every parameter gets a gradient (the comparison means something)
    for schedule in SCHEDULES:
        got_losses, got = meta_gradients(model, n_chunks, schedule)
        torch.testing.assert_close(got_losses, losses, atol=1e-13, rtol=0)
        for (name, _), a, b in zip(model.named_parameters(), got, grads):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10, msg=f"{schedule}, {n_chunks} chunks: {name}")


def test_a_bool_still_selects_each_or_none_and_a_wrong_name_is_one_line():
    assert ModelConfig(checkpoint_chunks=True).checkpoint_chunks == "each"
    assert ModelConfig(checkpoint_chunks=False).checkpoint_chunks == "none"
    assert ModelConfig(checkpoint_chunks="log").checkpoint_chunks == "log"
    with pytest.raises(ValueError, match=r"checkpoint_chunks='sqr' is unknown; expected one of none, each, sqrt, log") as err:
        ModelConfig(checkpoint_chunks="sqr")
    assert "\n" not in str(err.value)


def test_the_plans_cover_every_chunk_once_at_each_level():
    for n in (1, 2, 3, 7, 64, 100):
        for schedule in ("none", *SCHEDULES):
            segments = plan(n, schedule)
            assert [s.start for s in segments] == [0, *(s.stop for s in segments[:-1])] and segments[-1].stop == n
            stack = list(segments)
            while stack:
                seg = stack.pop()
                if seg.children:
                    assert seg.children[0].start == seg.start and seg.children[-1].stop == seg.stop
                    assert all(a.stop == b.start for a, b in zip(seg.children, seg.children[1:]))
                    stack += seg.children
                else:
                    assert len(seg) == 1


# ---------------------------------------------------------------- how many states are kept
class StateCounter:
    """Counts the chunk-boundary states (identified by the storage of their first fast-weight tensor) that
    autograd keeps for the backward pass: a state counts from the moment a saved-tensor pack holds it until
    its storage is freed. Also counts the chunk steps run."""

    def __init__(self, monkeypatch) -> None:
        self.states: dict[int, StorageWeakRef] = {}  # storage address -> the storage of a state's fast weights
        self.saved: dict[int, StorageWeakRef] = {}
        self.peak = self.steps = 0
        original = inner_loop.chunk_step

        def counted(model, update, fast, *args, **kwargs):
            self.steps += 1
            self._register(next(iter(fast.values())))
            out = original(model, update, fast, *args, **kwargs)
            self._register(next(iter(out.fast.values())))
            self._poll()
            return out
        monkeypatch.setattr(inner_loop, "chunk_step", counted)
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda x: x)

    def _register(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        self.states[storage.data_ptr()] = StorageWeakRef(storage)

    def _pack(self, x: torch.Tensor) -> torch.Tensor:
        address = x.untyped_storage().data_ptr()
        ref = self.states.get(address)
        if ref is not None and not ref.expired():
            self.saved[address] = ref
            self._poll()
        return x.detach()  # x itself would tie a tensor saved by the op that made it into a reference cycle

    def _poll(self) -> None:
        self.saved = {a: r for a, r in self.saved.items() if not r.expired()}
        self.peak = max(self.peak, len(self.saved))


def count_states(monkeypatch, n_chunks: int, schedule: str) -> StateCounter:
    model = tiny_model(1, torch.float32)
    ids, targets, mask = tiny_batch(model.cfg, n_chunks, batch=1)
    counter = StateCounter(monkeypatch)
    with counter.hooks:
        out = lm_loss(model, ids, targets, mask, ttt=True, update=make_update(model.cfg), create_graph=True,
                      checkpoint_chunks=schedule)
        forward_peak = counter.peak
        out.loss.backward()
    counter.forward_peak = forward_peak
    return counter


@pytest.mark.parametrize("n_chunks", [8, pytest.param(13, marks=SLOW)])
def test_the_counted_states_and_steps_are_the_planned_ones(monkeypatch, n_chunks):
    """The instrument first: without checkpointing every state is kept; with a schedule exactly as many as
    ``peak_states`` (the planner's number; the forward pass holds no more) and ``chunk_passes`` steps per chunk."""
    assert count_states(monkeypatch, n_chunks, "none").peak == n_chunks
    for schedule in SCHEDULES:
        counter = count_states(monkeypatch, n_chunks, schedule)
        assert counter.peak == peak_states(n_chunks, schedule), schedule
        assert forward_states(n_chunks, schedule) <= counter.forward_peak <= counter.peak, schedule
        assert counter.steps == round(chunk_passes(n_chunks, schedule) * n_chunks), schedule


@pytest.mark.slow
def test_sqrt_and_log_keep_few_states_over_128_chunks(monkeypatch):
    """T/b = 128: sqrt keeps at most 2·sqrt(128) states, log at most log2(128) + 1; each keeps all 128."""
    n = 128
    assert count_states(monkeypatch, n, "each").peak == n
    sqrt = count_states(monkeypatch, n, "sqrt").peak
    log = count_states(monkeypatch, n, "log").peak
    assert sqrt <= 2 * math.sqrt(n), sqrt
    assert log <= math.log2(n) + 1, log
    print(f"states kept over {n} chunks: each {n}, sqrt {sqrt}, log {log}")


@pytest.mark.slow
def test_the_lightning_module_passes_the_schedule_and_keeps_its_gradients():
    """A training step of the LightningModule (debug preset, fp32, 4 chunks, bool and names) gives the
    same loss and gradients whatever ``model.config.checkpoint_chunks`` is; hparams keep what was given."""
    from lightning_ttt.lit.module import TTTLanguageModel

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (2, 129), generator=g)
    batch = {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": torch.ones(2, 128, dtype=torch.bool)}
    results = {}
    for setting in (False, True, "sqrt", "log"):
        torch.manual_seed(0)
        module = TTTLanguageModel(method="e2e", seq_len=128, config={"checkpoint_chunks": setting})
        assert module.hparams.config["checkpoint_chunks"] == setting
        loss = module(batch, ttt=True, create_graph=True).loss
        loss.backward()
        results[module.cfg.checkpoint_chunks] = loss.detach(), {n: p.grad for n, p in module.named_parameters()}
    assert sorted(results) == ["each", "log", "none", "sqrt"]
    loss0, grads0 = results["none"]
    for schedule, (loss, grads) in results.items():
        torch.testing.assert_close(loss, loss0, rtol=0, atol=0)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, grads0[name], rtol=1e-4, atol=1e-7, msg=f"{schedule}: {name}")


def test_replays_reuse_the_forward_passes_autocast():
    """Under bf16 autocast the replays run in bf16 too: sqrt and log equal each (which sums parameter gradients
    the same way) to fp32 rounding, and stay within bf16 rounding of the plain loop (which sums them in bf16).
    Replaying in fp32 instead would be off by about 17%."""
    model = tiny_model(2, torch.float32)
    ids, targets, mask = tiny_batch(model.cfg, 5)

    def grads(schedule):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = lm_loss(model, ids, targets, mask, ttt=True, update=make_update(model.cfg), create_graph=True,
                          checkpoint_chunks=schedule)
        return torch.autograd.grad(out.loss, list(model.parameters()))

    def worst(got, ref):
        return max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(got, ref))
    plain, each = grads("none"), grads("each")
    for schedule in ("sqrt", "log"):
        got = grads(schedule)
        assert worst(got, each) < 1e-5, schedule
        assert worst(got, plain) < 0.03, schedule
