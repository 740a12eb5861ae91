"""DDP carries meta-learning: 2 gloo processes give the loss and gradients of one process on the whole batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ranks import run_ranks  # tests/ranks.py
from torch.nn.parallel import DistributedDataParallel

from lightning_ttt.lit.module import TTTLanguageModel

TINY = dict(d_model=32, n_heads=2, mlp_hidden=48, n_layers=2, suffix_len=1, window=16, mini_batch=8,
            ilr_init=0.5, ilr_warmup_steps=0)
SEQ, BATCH = 32, 4


def _model() -> TTTLanguageModel:
    torch.manual_seed(0)
    return TTTLanguageModel(preset="debug", method="e2e", config=TINY, seq_len=SEQ).double()


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (BATCH, SEQ + 1), generator=g)
    return {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": torch.ones(BATCH, SEQ, dtype=torch.bool)}


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _worker(rank: int, world: int) -> dict:
    model = _model()
    ddp = DistributedDataParallel(model)
    per = BATCH // world
    batch = {k: v[rank * per:(rank + 1) * per] for k, v in _batch().items()}
    loss = ddp(batch, ttt=True, create_graph=True).loss
    loss.backward()
    return {"loss": loss.detach(), "grads": _grads(model)}


@pytest.mark.slow  # spawns two processes
def test_two_process_ddp_meta_gradients_match_one_process(tmp_path: Path) -> None:
    model = _model()
    loss = model(_batch(), ttt=True, create_graph=True).loss
    loss.backward()
    expected = _grads(model)
    assert any(".prime." in n for n in expected)  # the meta-gradient reaches the fast weights' init
    ranks = run_ranks(_worker, tmp_path, world=2)
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss.detach(), rtol=0, atol=1e-10)
    for result in ranks:
        assert result["grads"].keys() == expected.keys()
        for name, grad in expected.items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=0, atol=1e-6, msg=name)
