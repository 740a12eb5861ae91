"""`ttt plan` fits every e2e paper recipe on an 80 GB device (the planner's estimate, tests/tools/test_plan_measured.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_ttt.tools.plan import plan
from lightning_ttt.tools.recipe import parse_recipe, recipe_model

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes/paper").glob("*e2e*.yaml")), ids=lambda p: p.stem)
def test_e2e_recipe_fits_80gb(recipe: Path) -> None:
    settings = parse_recipe(["--config", str(recipe)], prog="ttt plan").as_dict()
    cfg, _ = recipe_model(settings)
    p = plan(settings, cfg)
    assert p["fits"], f"{recipe.name}: {p['memory_gb']:.1f} GB per device: {p['parts_gb']}"
