"""`ttt plan` fits every e2e paper recipe on an 80 GB device (the planner's estimate, tests/tools/test_plan_measured.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_ttt.tools.plan import plan
from lightning_ttt.tools.recipe import parse_recipe, recipe_model

REPO = Path(__file__).resolve().parents[2]
# 3b at 128K: ~103 GB even sharded and with log checkpointing through time; the fp32 inputs of the 24
# prefix blocks alone are 31 GB. It needs context parallelism or fewer kept block inputs (see docs/memory-plan.md).
TOO_BIG = {"ext-3b-e2e-128K", "ext-3b-e2e-128K-3x"}


def _case(path: Path):
    marks = [pytest.mark.xfail(strict=True, reason="needs context parallelism")] if path.stem in TOO_BIG else []
    return pytest.param(path, id=path.stem, marks=marks)


@pytest.mark.parametrize("recipe", [_case(p) for p in sorted((REPO / "recipes/paper").glob("*e2e*.yaml"))])
def test_e2e_recipe_fits_80gb(recipe: Path) -> None:
    settings = parse_recipe(["--config", str(recipe)], prog="ttt plan").as_dict()
    cfg, _ = recipe_model(settings)
    p = plan(settings, cfg)
    assert p["fits"], f"{recipe.name}: {p['memory_gb']:.1f} GB per device: {p['parts_gb']}"
