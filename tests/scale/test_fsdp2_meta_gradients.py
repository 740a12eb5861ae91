"""FSDP2 carries meta-learning: 2 gloo processes, each holding half of every sharded unit and half of the
batch, give the gradients of one process on the whole batch (the full, gathered gradients), step after
step, with activation checkpointing of blocks and inner-loop chunks; and Lightning's strategy
(``trainer.strategy: fsdp2``) does the same in a fit.

Tolerance (fp32): per tensor, max |sharded - single| <= 5e-5 * max |single|. Measured worst cases: 5e-7 at
the first step and 1.2e-5 at the second (whose weights already differ by the rounding of the first); the
same run in float64 gives 9e-16 and 2.4e-14, so the two differ only in rounding (the cross-rank mean).
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import pytest
import torch
from ranks import run_ranks  # tests/ranks.py
from torch.distributed.tensor import DTensor

from lightning_ttt.lit.module import TTTLanguageModel
from lightning_ttt.lit.sharding import FSDP2Strategy
from lightning_ttt.model.sharding import shard_model

# two suffix blocks: the first prime MLP's inner gradient runs back through the second block's attention
TINY = dict(d_model=32, n_heads=2, mlp_hidden=48, n_layers=4, suffix_len=2, window=16, mini_batch=8,
            ilr_init=0.5, ilr_warmup_steps=0)
CHECKPOINTED = dict(checkpoint_blocks=True, checkpoint_chunks=True)
SEQ, BATCH, STEPS, SGD_LR, RTOL = 32, 4, 2, 0.5, 5e-5


def _model(settings: dict) -> TTTLanguageModel:
    torch.manual_seed(0)
    module = TTTLanguageModel(preset="debug", method="e2e", config={**TINY, **settings}, seq_len=SEQ)
    module.configure_model()  # activation checkpointing, as the Trainer applies it
    return module


def _batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(STEPS):
        ids = torch.randint(0, 256, (BATCH, SEQ + 1), generator=g)
        batches.append({"input_ids": ids[:, :-1], "targets": ids[:, 1:],
                        "loss_mask": torch.rand(BATCH, SEQ, generator=g) > 0.2})
    return batches


def _whole(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()


def _train(module: TTTLanguageModel, batches: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """STEPS meta-gradient steps with plain SGD in between; the whole gradients of every step."""
    grads = []
    for batch in batches:
        module(batch, ttt=True, create_graph=True).loss.backward()
        grads.append({n: _whole(p.grad) for n, p in module.named_parameters() if p.grad is not None})
        with torch.no_grad():
            for p in module.parameters():
                p -= SGD_LR * p.grad
                p.grad = None
    return grads


def _sharded_worker(rank: int, world: int) -> list[dict[str, torch.Tensor]]:
    per = BATCH // world
    module = _model(CHECKPOINTED)
    shard_model(module.model)
    return _train(module, [{k: v[rank * per:(rank + 1) * per] for k, v in b.items()} for b in _batches()])


def _assert_close(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where: str) -> None:
    assert got.keys() == expected.keys(), where
    for name, grad in expected.items():
        error = (got[name] - grad).abs().max().item()
        assert error <= RTOL * grad.abs().max().item(), f"{where} {name}: max error {error:.3g}"


@pytest.mark.slow  # spawns two processes
def test_fsdp2_meta_gradients_match_one_process(tmp_path: Path) -> None:
    expected = _train(_model(CHECKPOINTED), _batches())
    assert any(".prime." in n for n in expected[0])  # the meta-gradient reaches the fast weights' init
    ranks = run_ranks(_sharded_worker, tmp_path, world=2)
    for rank, steps in enumerate(ranks):
        for step, grads in enumerate(expected):
            _assert_close(steps[step], grads, f"rank {rank}, step {step}:")


class GradientProbe(L.Callback):
    """Keeps the whole (gathered) gradients of the first optimizer step."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if not self.grads:
            self.grads = {n: _whole(p.grad) for n, p in pl_module.named_parameters() if p.grad is not None}


def _samples() -> list[dict[str, torch.Tensor]]:
    batch = _batches()[0]
    return [{k: v[i] for k, v in batch.items()} for i in range(BATCH)]


def _lightning_worker(rank: int, world: int) -> dict[str, torch.Tensor]:
    os.environ["LOCAL_RANK"] = str(rank)  # the processes and their process group exist: Lightning joins them
    torch.manual_seed(0)
    module = TTTLanguageModel(preset="debug", method="e2e", config=TINY, seq_len=SEQ)
    probe = GradientProbe()
    trainer = L.Trainer(accelerator="cpu", devices=world, strategy="fsdp2", max_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[probe])
    assert isinstance(trainer.strategy, FSDP2Strategy)
    # Lightning's distributed sampler gives rank r the samples r, r + world, ...: half of the batch each
    trainer.fit(module, torch.utils.data.DataLoader(_samples(), batch_size=BATCH // world))
    assert trainer.global_step == 1
    return probe.grads


@pytest.mark.slow  # spawns two processes
def test_lightning_fsdp2_fit_step_has_the_one_process_gradients(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = TTTLanguageModel(preset="debug", method="e2e", config=TINY, seq_len=SEQ)
    module(_batches()[0], ttt=True, create_graph=True).loss.backward()
    expected = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    for rank, grads in enumerate(run_ranks(_lightning_worker, tmp_path, world=2)):
        _assert_close(grads, expected, f"rank {rank}:")
