"""`ttt plan` reproduces the paper's parameter counts (reference/paper.md §1.3) and runs on a recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_ttt.cli import main
from lightning_ttt.config import ModelConfig
from lightning_ttt.tools.plan import counts, load_recipe, plan

REPO = Path(__file__).resolve().parents[2]
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
    assert "184.4M parameters, 11.5M fast weights" in out
    assert "524,288 tokens/step" in out and "WARNING" not in out


def test_plan_warns_when_a_recipe_cannot_fit(tmp_path: Path) -> None:
    no_accumulation = tmp_path / "noacc.yaml"
    no_accumulation.write_text("trainer:\n  accumulate_grad_batches: 1\ndata:\n  batch_size: 4\n")
    spec = load_recipe([str(REPO / "recipes/paper/ext-760m-e2e-32K.yaml"), str(no_accumulation)])
    result = plan(spec)
    assert result["micro_batch"] == 4 and not result["fits"]


def test_plan_reports_a_missing_recipe(tmp_path: Path, capsys) -> None:
    assert main(["plan", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
