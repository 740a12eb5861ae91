"""Golden losses: the first training steps of every debug recipe equal the recorded ones.

A silent change in training behaviour (initialisation, data order, loss, mask, schedule, inner loop,
optimizer) fails here. After an intended change, regenerate the record with the command it names
(``python tests/lit/golden.py``) and say why in the commit.

Tolerance: 1e-3 nats per step, absolute. Two runs, and runs with 1 or 2 threads, gave bit-identical
losses on the development machine; another CPU may round float32 sums differently, which starts
near 1e-7 and can grow over 20 AdamW steps, so the margin is generous. Changes one would not want
to slip through move the losses far more within 20 steps (measured): +0.5% initialisation std
4e-3, +1% learning rate 2e-2, inner clip 1.0 -> 0.99 3e-2.
"""

from __future__ import annotations

import json

import pytest
from golden import GOLDEN, RECIPES, THREADS, train_losses  # tests/lit/golden.py

TOLERANCE = 1e-3


@pytest.mark.parametrize("recipe", [pytest.param(r, marks=pytest.mark.slow) if r in ("swa", "e2e-naive") else r
                                    for r in RECIPES])  # fa and e2e in test-fast, all four in make test
def test_debug_recipe_trains_as_recorded(recipe: str) -> None:
    golden = json.loads(GOLDEN.read_text())
    assert golden["threads"] == THREADS and len(golden["losses"][recipe]) == golden["steps"]
    losses = train_losses(recipe, golden["steps"])
    worst = max(abs(a - b) for a, b in zip(losses, golden["losses"][recipe]))
    assert len(losses) == golden["steps"] and worst <= TOLERANCE, (
        f"recipes/debug/{recipe}.yaml trains differently (max deviation {worst:.2e}); if intended, run "
        f"`{golden['command']}`")


def test_the_recipes_differ_from_each_other() -> None:
    """Guard against a vacuous record: the four recipes train to four different curves."""
    losses = json.loads(GOLDEN.read_text())["losses"]
    curves = {recipe: tuple(round(x, 4) for x in losses[recipe]) for recipe in RECIPES}
    assert len(set(curves.values())) == len(RECIPES)
    assert all(curve[-1] < curve[0] - 1.0 for curve in curves.values())  # and they learn
