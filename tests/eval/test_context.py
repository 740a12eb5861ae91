"""`ttt eval-context`: one checkpoint at several lengths, numbers equal to a direct evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_ttt.cli import main
from lightning_ttt.data.datamodule import LongContextDataModule
from lightning_ttt.eval.context import data_settings, evaluate_context
from lightning_ttt.infer.loading import read_checkpoint
from lightning_ttt.lit.module import module_from_checkpoint

CPU = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}


def _direct_loss(ckpt_path: Path, length: int, windows: int, method: str | None = None) -> tuple[float, float]:
    """Mean chunk loss and token NLL of the same windows, computed without Lightning (TTT on for e2e)."""
    ckpt, hp = read_checkpoint(ckpt_path)
    module = module_from_checkpoint(ckpt, {**hp, "seq_len": length, "method": method or hp["method"], "init_from": None}, "ckpt")
    data = LongContextDataModule(**{**data_settings(ckpt, None), "seq_len": length, "max_val_windows": windows,
                                    "batch_size": windows})
    data.setup("validate")
    (batch,) = list(data.val_dataloader())
    ttt = module.cfg.method == "e2e"
    with torch.enable_grad():
        out = module(batch, ttt=ttt, create_graph=False)
    mask = batch["loss_mask"]
    return float(out.chunk_loss.detach().mean()), float(out.token_nll.detach()[mask].mean())


def test_eval_context_matches_a_direct_evaluation_at_every_length(tiny_sweep, tmp_path: Path) -> None:
    ckpt = tiny_sweep.out / "runs" / "e2e" / "extend-00064" / "checkpoints" / "last.ckpt"
    result = evaluate_context(ckpt, [32, 64], tmp_path, tokens_per_length=128, batch_tokens=64, last_tokens=16,
                              trainer_kwargs=CPU)
    assert [r["seq_len"] for r in result["rows"]] == [32, 64] and result["method"] == "e2e"
    for row in result["rows"]:
        windows = 128 // row["seq_len"]
        loss, nll = _direct_loss(ckpt, row["seq_len"], windows)
        assert row["windows"] == windows
        assert row["documents"] == windows  # fewer windows than held-out documents: one document each
        assert row["loss"] == pytest.approx(loss, abs=1e-5) and row["nll"] == pytest.approx(nll, abs=1e-5)
        assert row["ppl"] == pytest.approx(torch.exp(torch.tensor(nll)).item(), rel=1e-5)
        report = json.loads((tmp_path / f"nll_by_position-{row['seq_len']:06d}.json").read_text())
        last = report["nll"][-16:]
        assert row["last_loss"] == pytest.approx(sum(last) / 16, abs=1e-5)
    saved = json.loads((tmp_path / "context_eval.json").read_text())
    assert [r["loss"] for r in saved["rows"]] == [r["loss"] for r in result["rows"]]
    assert (tmp_path / "context_eval.csv").read_text().splitlines()[0].startswith("seq_len,loss,nll,ppl,last_loss")
    assert (tmp_path / "context_eval.png").read_bytes()[:4] == b"\x89PNG"


def test_fa_weights_evaluate_as_swa_with_the_window(tiny_sweep, tmp_path: Path) -> None:
    ckpt = tiny_sweep.out / "runs" / "fa" / "pretrain-00032" / "checkpoints" / "last.ckpt"
    fa = evaluate_context(ckpt, [32, 64], tmp_path / "fa", tokens_per_length=128, trainer_kwargs=CPU)["rows"]
    swa = evaluate_context(ckpt, [32, 64], tmp_path / "swa", method="swa", tokens_per_length=128,
                           trainer_kwargs=CPU)["rows"]
    assert swa[0]["loss"] == pytest.approx(fa[0]["loss"], abs=1e-6)  # T = 32 = window: the same attention
    assert swa[1]["loss"] != pytest.approx(fa[1]["loss"], abs=1e-6)  # T = 64: swa sees only 32 tokens back
    assert swa[1]["loss"] == pytest.approx(_direct_loss(ckpt, 64, 2, method="swa")[0], abs=1e-5)


def test_eval_context_command_prints_the_table_and_rejects_bad_input(tiny_sweep, tmp_path: Path, capsys) -> None:
    ckpt = tiny_sweep.out / "runs" / "e2e" / "pretrain-00032" / "checkpoints" / "last.ckpt"
    assert main(["eval-context", str(ckpt), "--lengths", "32", "--out", str(tmp_path / "ctx"), "--tokens-per-length",
                 "64", "--accelerator", "cpu", "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "| windows | documents |" in table and "| 32 |" in table
    assert main(["eval-context", str(ckpt), "--lengths", "32", "--out", str(tmp_path / "o"), "--method", "fa"]) == 2
    assert "the checkpoint is method e2e; only fa and swa weights are interchangeable" in capsys.readouterr().err
    assert main(["eval-context", str(tmp_path / "none.ckpt"), "--lengths", "32", "--out", str(tmp_path / "o")]) == 2
    assert "none.ckpt does not exist" in capsys.readouterr().err
    assert main(["eval-context", str(ckpt), "--lengths", "40", "--out", str(tmp_path / "bad")]) == 2
    assert "must be a multiple of the mini-batch size" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "context_eval.json").exists()
    (tmp_path / "data.yaml").write_text("trainer: {}\n")
    assert main(["eval-context", str(ckpt), "--lengths", "32", "--out", str(tmp_path / "o"), "--data-config",
                 str(tmp_path / "data.yaml")]) == 2
    assert "has no `data:` section" in capsys.readouterr().err


def test_eval_context_refuses_a_used_out_unless_overwrite_and_then_replaces_it(tiny_sweep, tmp_path: Path,
                                                                                capsys) -> None:
    ckpt = tiny_sweep.out / "runs" / "e2e" / "pretrain-00032" / "checkpoints" / "last.ckpt"
    out = tmp_path / "ctx"
    out.mkdir()
    (out / "context_eval.json").write_text("old\n")
    (out / "nll_by_position-000064.json").write_text("stale\n")
    args = ["eval-context", str(ckpt), "--lengths", "32", "--out", str(out), "--tokens-per-length", "64",
            "--accelerator", "cpu", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"--out {out} is not empty; pass --overwrite to replace it" in err and len(err.strip().splitlines()) == 1
    assert (out / "context_eval.json").read_text() == "old\n" and (out / "nll_by_position-000064.json").exists()
    assert main([*args, "--overwrite"]) == 0
    assert json.loads((out / "context_eval.json").read_text())["rows"][0]["seq_len"] == 32
    assert sorted(p.name for p in out.glob("nll_by_position-*")) == ["nll_by_position-000032.csv",
                                                                     "nll_by_position-000032.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["ctx"]  # no temporary or old folder left beside it
