"""Resuming with --ckpt_path: the config given describes the run; a checkpoint of another model, a
corrupt file or a missing one is a one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_ttt.cli import main
from lightning_ttt.lit.cli import SettingsError, cli_main
from lightning_ttt.lit.module import TTTLanguageModel
from lightning_ttt.lit.trainer import TTTTrainer

REPO = Path(__file__).resolve().parents[2]
E2E = str(REPO / "recipes/debug/e2e.yaml")
SMALL = ["--data.seq_len=64", "--data.batch_size=2", "--data.max_val_windows=2", "--trainer.limit_val_batches=1"]


def _saved(path: Path, **hparams) -> Path:
    """A checkpoint as TTTLanguageModel saves it (weights and hyper-parameters), without training."""
    module = TTTLanguageModel(**hparams)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "global_step": 0}, path)
    return path


def _error_line(capsys) -> str:
    """The command's error: one line (Lightning's INFO lines about the machine may come before it)."""
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("ttt ")]
    return line


def test_checkpoint_of_another_method_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    fa = _saved(tmp_path / "fa.ckpt", method="fa", seq_len=64)
    assert main(["fit", "--config", E2E, *SMALL, "--ckpt_path", str(fa)]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"ttt fit: error: --ckpt_path={fa}: the checkpoint holds another model than the config: "
                           "model.method='e2e' (checkpoint: 'fa'), model.config.mlp_hidden=320 (checkpoint: 384), "
                           "model.config.suffix_len=1 (checkpoint: 0); give the config it was trained with"), line
    swa = _saved(tmp_path / "swa.ckpt", method="swa", seq_len=64)  # same weights as fa, but not the same run
    with pytest.raises(SettingsError, match=r"model.method='fa' \(checkpoint: 'swa'\)"):
        cli_main(["validate", "--config", str(REPO / "recipes/debug/fa.yaml"), *SMALL, "--ckpt_path", str(swa)])
    wide = _saved(tmp_path / "wide.ckpt", method="e2e", seq_len=64, config={"d_model": 64})
    with pytest.raises(SettingsError, match=r"model.config.d_model=128 \(checkpoint: 64\)"):
        cli_main(["fit", "--config", E2E, *SMALL, "--ckpt_path", str(wide)])


@pytest.mark.parametrize("content", [b"\x80\x03corrupt" * 10, b"", "torch-dict"])
def test_corrupt_or_non_checkpoint_file_is_a_one_line_error(content, tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.ckpt"
    if content == "torch-dict":
        torch.save({"epoch": 3}, path)
    else:
        path.write_bytes(content)
    assert main(["fit", "--config", E2E, *SMALL, "--ckpt_path", str(path)]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"ttt fit: error: --ckpt_path={path}: {path} is not a "), line
    assert main(["validate", "--config", E2E, "--ckpt_path", str(tmp_path / "missing.ckpt")]) == 2
    assert _error_line(capsys) == f"ttt validate: error: --ckpt_path={tmp_path / 'missing.ckpt'}: no such checkpoint file"


def test_the_config_given_wins_over_the_checkpoint_hyperparameters(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = TTTLanguageModel(method="e2e", seq_len=64, lr=1e-3, config={"window": 64})
    batches = [{"input_ids": torch.zeros(64, dtype=torch.long), "targets": torch.ones(64, dtype=torch.long),
                "loss_mask": torch.ones(64, dtype=torch.bool)}] * 2
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = TTTTrainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[checkpoints])
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=2))
    cli = cli_main(["validate", "--config", E2E, *SMALL, "--ckpt_path", str(tmp_path / "last.ckpt"),
                    f"--trainer.logger.init_args.save_dir={tmp_path}"])
    assert cli.model.hparams.lr == 3e-3 and cli.model.cfg.window == 128  # the recipe's, not the checkpoint's
    assert cli.model.cfg.ilr_warmup_steps == 15
    torch.testing.assert_close(cli.model.model.embed.weight, module.model.embed.weight)  # its weights were loaded


def test_resumed_fit_follows_the_configured_optimiser_and_schedule(tmp_path: Path, caplog) -> None:
    """A new lr, AdamW setting or trainer.max_steps given on resuming takes effect, instead of the
    values restored with the checkpoint's optimiser and scheduler state."""
    torch.manual_seed(0)
    module = TTTLanguageModel(method="e2e", seq_len=64, lr=1e-3, weight_decay=0.0)
    batches = [{"input_ids": torch.zeros(64, dtype=torch.long), "targets": torch.ones(64, dtype=torch.long),
                "loss_mask": torch.ones(64, dtype=torch.bool)}] * 2
    trainer = TTTTrainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=2))
    cli = cli_main(["fit", "--config", E2E, *SMALL, "--ckpt_path", str(tmp_path / "last.ckpt"), "--trainer.max_steps=5",
                    "--model.warmup_fraction=0", f"--trainer.logger.init_args.save_dir={tmp_path}"])
    assert cli.trainer.global_step == 5
    assert f"resuming from {tmp_path / 'last.ckpt'}: this run logs into {cli.trainer.log_dir}" in caplog.text
    (group,) = cli.trainer.optimizers[0].param_groups
    assert group["initial_lr"] == 3e-3 and group["weight_decay"] == 0.1  # the recipe's, not the checkpoint's
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
    assert (scheduler.lr_lambdas[0].warmup, scheduler.lr_lambdas[0].total) == (0, 5)
    assert group["lr"] == pytest.approx(3e-3 * scheduler.lr_lambdas[0](5))
    assert cli.trainer.optimizers[0].state[next(iter(cli.model.parameters()))]["step"] == 5  # AdamW state resumed
