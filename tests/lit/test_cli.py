"""The CLI: every recipe loads, configs stack, short fits of each method leave checkpoints and logs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml

from lightning_ttt.cli import main
from lightning_ttt.config import ModelSettings
from lightning_ttt.lit.cli import cli_main

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml")
                 if not {"data", "released"} & set(p.relative_to(REPO / "recipes").parts)
                 and not p.name.startswith("sweep-"))
# recipes/data/*.yaml are data fragments stacked on a model recipe; tests/data/test_recipes.py loads them.
# recipes/**/sweep-*.yaml are `ttt sweep` files; tests/eval/test_sweep.py loads every run they plan.
# recipes/released/*.yaml are fragments for the authors' released models; tests/convert loads them.
SMALL = ["--data.seq_len=128", "--data.batch_size=2", "--data.max_val_windows=2", "--trainer.max_steps=2",
         "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1", "--trainer.log_every_n_steps=1"]


PAPER = [p for p in RECIPES if p.parent.name == "paper"]


def _recipe_param(recipe: Path):
    """The paper recipes differ only in their numbers: every 8th loads in `make test-fast`, all in `make test`."""
    sampled = recipe.parent.name != "paper" or PAPER.index(recipe) % 8 == 0
    return pytest.param(recipe, id=str(recipe.relative_to(REPO / "recipes")), marks=() if sampled else pytest.mark.slow)


@pytest.mark.parametrize("recipe", [_recipe_param(p) for p in RECIPES])
def test_every_recipe_loads_through_the_cli(recipe: Path) -> None:
    gpu = (yaml.safe_load(recipe.read_text())["trainer"] or {}).get("accelerator") == "gpu"
    if gpu:  # no network (hub tokenizers, some gated) and no 3B model in memory: meta device
        with torch.device("meta"):
            cli = cli_main(["--config", str(recipe), "--data.tokenizer=bytes", "--trainer.accelerator=cpu",
                           "--trainer.devices=1"], run=False)
    else:
        cli = cli_main(["--config", str(recipe)], run=False)
    spec = yaml.safe_load(recipe.read_text())
    assert cli.model.cfg.method == spec["model"]["method"]
    assert cli.model.hparams.seq_len == cli.datamodule.seq_len  # linked from data.seq_len
    for key, value in (spec["model"].get("config") or {}).items():
        assert getattr(cli.model.cfg, key) == value


def test_stacked_configs_merge(tmp_path: Path) -> None:
    extra = tmp_path / "longer.yaml"
    extra.write_text("data:\n  seq_len: 1024\nmodel:\n  config:\n    window: 256\n")
    cli = cli_main(["--config", str(REPO / "recipes/debug/e2e.yaml"), "--config", str(extra)], run=False)
    assert cli.datamodule.seq_len == 1024 and cli.model.hparams.seq_len == 1024
    assert cli.model.cfg.window == 256
    assert cli.model.cfg.method == "e2e"  # kept from the first file


def _printed(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_print_config_shows_the_model_settings_the_run_uses(capsys, tmp_path: Path) -> None:
    printed = _printed(capsys, "--config", str(REPO / "recipes/debug/e2e.yaml"), "--model.config.window", "256")
    assert printed["model"]["method"] == "e2e" and printed["data"]["seq_len"] == 512
    config = printed["model"]["config"]
    assert {f.name for f in dataclasses.fields(ModelSettings)} == set(config)  # every setting, none hidden
    assert (config["window"], config["mini_batch"], config["inner_lr"]) == (256, 32, 1.0)  # given, preset, preset
    assert (config["ilr_init"], config["ilr_warmup_steps"], config["suffix_len"]) == (0.1, 15, 1)  # the recipe's
    assert config["vocab_size"] is None  # follows data.tokenizer
    # the printed config reproduces the run's model
    saved = tmp_path / "printed.yaml"
    saved.write_text(yaml.safe_dump({k: printed[k] for k in ("seed_everything", "trainer", "model", "data")}))
    again = cli_main(["--config", str(saved)], run=False).model.cfg
    direct = cli_main(["--config", str(REPO / "recipes/debug/e2e.yaml"), "--model.config.window=256"], run=False)
    assert again == direct.model.cfg and again.window == 256
    fa = _printed(capsys, "--config", str(REPO / "recipes/paper/pretrain-125m-fa.yaml"), "--data.tokenizer=bytes")
    assert (fa["model"]["config"]["window"], fa["model"]["config"]["suffix_len"]) == (8192, 0)


def test_fit_help_documents_every_model_setting(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for field in dataclasses.fields(ModelSettings):
        assert f"--model.config.{field.name} " in out, field.name
    assert "--model.config.window WINDOW Sliding-window size k in tokens" in out
    assert "Default: the preset's (debug e2e: 128)" in out and "Default: the tokenizer's" in out


def test_bad_settings_fail_with_one_line_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        cli_main(["--config", str(REPO / "recipes/debug/e2e.yaml"), "--model.preset=huge"], run=False)
    with pytest.raises(ValueError, match=r"data\.seq_len=100 must be a multiple of the mini-batch size b=32"):
        cli_main(["--config", str(REPO / "recipes/debug/e2e.yaml"), "--data.seq_len=100"], run=False)


@pytest.mark.parametrize("args, message", [
    (["validate", "--data.sources=[nope]"], "ttt validate: error: source 'nope': no such file or directory"),
    (["fit", "--model.init_from=/nonexistent"],
     "ttt fit: error: model.init_from=/nonexistent: no such checkpoint or exported model directory"),
    (["test", "--trainer.max_steps=abc"], "ttt test: error: --trainer.max_steps: expected int. Got value: abc"),
    (["fit", "--trainer.accelerator=tpu"], "ttt fit: error: trainer: Requirement 'torch_xla"),
])
def test_settings_errors_found_before_training_are_one_line_exit_2(args, message, capsys, tmp_path) -> None:
    """Errors of the data and model setup (run by the Trainer) are reported like parsing errors."""
    command, *rest = args
    code = main([command, "--config", str(REPO / "recipes/debug/e2e.yaml"), *SMALL, *rest,
                 f"--trainer.logger.init_args.save_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "usage:" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("ttt ")]
    assert line.startswith(message), line


def _fit(method: str, root: Path, *extra: str) -> Path:
    cli_main(["fit", "--config", str(REPO / f"recipes/debug/{method}.yaml"), *SMALL,
              f"--trainer.logger.init_args.save_dir={root}", *extra])
    (version,) = (root / f"debug-{method}").iterdir()
    return version


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fa", "swa", "e2e"])
def test_short_fit_leaves_checkpoint_and_tensorboard_logs(method: str, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_ttt.infer.loading import load_checkpoint
    from lightning_ttt.model.flops import model_flops

    run = _fit(method, tmp_path)
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    state = torch.load(ckpt, map_location="cpu", weights_only=True)  # loadable without pickle code
    assert state["global_step"] == 2
    events = EventAccumulator(str(run), size_guidance={"images": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "train/lr", "train/device/items_per_sec", "train/device/flops_per_sec"} <= scalars
    (tokens,), (flops,) = events.Scalars("train/device/items_per_sec"), events.Scalars("train/device/flops_per_sec")
    cfg = load_checkpoint(ckpt).model.cfg  # ThroughputMonitor's FLOPs are model_flops per token
    assert flops.value / tokens.value == pytest.approx(model_flops(cfg, 128) / 128, rel=1e-6)
    assert [e.step for e in events.Scalars("train/loss")] == [0, 1]  # the weights behind each loss: 0 and 1 steps
    assert [e.step for e in events.Scalars("val/loss")] == [2]  # evaluated after 2 steps, like step000002 files
    assert [e.step for e in events.Images("val/nll_by_position")] == [2]
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    settings = HParamsPluginData.FromString(start).session_start_info.hparams
    assert settings["method"].string_value == method and settings["seq_len"].number_value == 128
    assert settings["mini_batch"].number_value == 32 and settings["val_documents"].number_value == 2
    (final,) = events.Scalars("hparam/val_loss")
    assert final.value == pytest.approx(events.Scalars("val/loss")[-1].value)
    assert {"val/nll", "val/ppl"} <= scalars
    assert any(tag.startswith("val_nll_by_position/log_") for tag in scalars)
    assert any(tag.startswith("val_nll_by_position/fixed_") for tag in scalars)
    assert "val/nll_by_position" in events.Tags()["images"]
    report = json.loads((run / "nll_by_position" / "val-step000002.json").read_text())  # the run dir has the buckets
    assert report["seq_len"] == len(report["nll"]) and report["fixed_buckets"][-1]["hi"] == report["seq_len"]
    assert (run / "nll_by_position" / "val-step000002.csv").read_text().startswith("buckets,lo,hi,nll,tokens")
    if method == "e2e":
        assert {"ttt/inner_grad_norm_mean", "ttt/inner_lr_multiplier"} <= scalars
    loaded = load_checkpoint(ckpt)  # a checkpoint written through the CLI loads for inference
    torch.testing.assert_close(loaded.model.embed.weight, state["state_dict"]["model.embed.weight"])
    losses = [e.value for e in events.Scalars("train/loss")]
    assert all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("recipe", ["fa", "swa", "e2e", "e2e-naive"])
def test_debug_recipes_keep_every_checkpoint_they_write(recipe: str) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    cli = cli_main(["--config", str(REPO / f"recipes/debug/{recipe}.yaml")], run=False)
    (saver,) = [c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    every = saver._every_n_train_steps
    assert saver.save_top_k == -1 and saver.save_last  # step000050, step000100, step000150 and last.ckpt
    assert every > 0 and cli.trainer.max_steps % every == 0


@pytest.mark.slow
def test_validating_a_checkpoint_logs_at_its_step(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _fit("swa", tmp_path / "fit")
    cli_main(["validate", "--config", str(REPO / "recipes/debug/swa.yaml"), *SMALL[:3],
              f"--trainer.logger.init_args.save_dir={tmp_path / 'validate'}",
              f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    (version,) = (tmp_path / "validate" / "debug-swa").iterdir()
    events = EventAccumulator(str(version), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [2]  # the checkpoint's step, not 0
    assert [e.step for e in events.Images("val/nll_by_position")] == [2]
    assert (version / "nll_by_position" / "val-step000002.json").is_file()


@pytest.mark.slow
def test_bf16_mixed_meta_training_runs(tmp_path: Path) -> None:
    run = _fit("e2e", tmp_path, "--trainer.precision=bf16-mixed")
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(t.dtype == torch.float32 for t in state["state_dict"].values() if t.is_floating_point())


def test_verify_reference_command(tiny_fixture: Path, capsys) -> None:
    assert main(["verify-reference", str(tiny_fixture), "--modes", "meta", "--dtype", "float64"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["modes"]["meta"]["checked"] > 40


def test_verify_reference_missing_file(tmp_path: Path, capsys) -> None:
    assert main(["verify-reference", str(tmp_path / "nope.npz")]) == 2
    assert "nope.npz" in capsys.readouterr().err
