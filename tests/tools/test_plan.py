"""`ttt plan` reproduces the paper's parameter counts (reference/paper.md §1.3) and takes `ttt fit`'s settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_ttt.cli import main
from lightning_ttt.config import ModelConfig
from lightning_ttt.tools.plan import counts

REPO = Path(__file__).resolve().parents[2]
E2E = str(REPO / "recipes/debug/e2e.yaml")
# size -> (FA total, E2E total, prime/fast params), in millions, as printed in paper.md §1.3
PAPER = {"125m": (183.5, 184.4, 11.5), "350m": (439.7, 444.4, 42.5), "760m": (876.6, 883.7, 92.0),
         "1b": (1458, 1468, 160.4), "3b": (2866, 2898, 346.0)}


@pytest.mark.parametrize("size", list(PAPER))
def test_parameter_counts_match_the_paper(size: str) -> None:
    fa, e2e, fast = PAPER[size]
    step = 1.0 if fa > 1000 else 0.1  # the paper prints 1.458B / 2.866B: rounded to 1M
    got_fa, got_e2e = counts(ModelConfig.from_preset(size, "fa")), counts(ModelConfig.from_preset(size, "e2e"))
    assert round(got_fa["total"] / 1e6 / step) * step == pytest.approx(fa)
    assert round(got_e2e["total"] / 1e6 / step) * step == pytest.approx(e2e)
    assert round(got_e2e["fast"] / 1e5) / 10 == pytest.approx(fast)
    assert got_fa["fast"] == 0


def test_plan_runs_on_a_recipe(capsys) -> None:
    assert main(["plan", "--config", str(REPO / "recipes/paper/pretrain-125m-e2e.yaml")]) == 0
    out = capsys.readouterr().out
    assert "184.4M parameters = 98.5M embedding (tied head) + 85.9M blocks; 11.5M fast weights" in out
    assert "524,288 tokens/step" in out and "WARNING" not in out


def test_plan_takes_the_settings_of_fit(capsys) -> None:
    """--config stacking and --key value overrides as in `ttt fit`; the vocabulary follows data.tokenizer."""
    assert main(["plan", "--config", E2E, "--model.config.window", "256", "--data.batch_size", "2"]) == 0
    out = capsys.readouterr().out
    assert "window 256, test-time training every 32 tokens" in out and "1 devices x 2 x 512 tokens" in out
    assert "258 ids, data.tokenizer=bytes" in out
    assert main(["plan", "--config", E2E, "--model.preset", "125m"]) == 0  # a Llama-3-sized preset, bytes tokenizer
    out = capsys.readouterr().out
    assert "258 ids, data.tokenizer=bytes" in out
    assert f"= {258 * 768 / 1e3:.1f}K embedding (tied head)" in out


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes/paper").glob("*-e2e-*.yaml"))[::7], ids=lambda p: p.stem)
def test_paper_recipes_plan(recipe: Path, capsys) -> None:
    assert main(["plan", "--config", str(recipe)]) == 0
    assert "128,256 ids" in capsys.readouterr().out  # the preset's Llama-3 vocabulary (or the cached tokenizer's)


def test_plan_warns_when_a_recipe_cannot_fit_and_advises_only_what_is_not_on(tmp_path: Path, capsys) -> None:
    ext = str(REPO / "recipes/paper/ext-760m-e2e-32K.yaml")
    assert main(["plan", "--config", ext, "--trainer.accumulate_grad_batches", "1", "--data.batch_size", "4"]) == 0
    warning = capsys.readouterr().out.splitlines()[-1]
    assert warning.startswith("WARNING: about") and "lower data.batch_size (now 4)" in warning
    assert "checkpoint_blocks" not in warning and "checkpoint_chunks" not in warning  # the recipe sets both
    assert main(["plan", "--config", ext, "--data.batch_size", "4", "--model.config.checkpoint_chunks", "false"]) == 0
    assert "set model.config.checkpoint_chunks: sqrt or log (now none)" in capsys.readouterr().out


def test_plan_reports_a_missing_recipe_or_a_bad_setting(tmp_path: Path, capsys) -> None:
    assert main(["plan", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert main(["plan", "--config", E2E, "--model.config.windw", "256"]) == 2
    assert capsys.readouterr().err.strip() == "ttt plan: error: unrecognized arguments: --model.config.windw 256"
