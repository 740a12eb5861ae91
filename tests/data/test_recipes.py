"""Every data fragment under recipes/data/ loads through the real CLI on top of a model recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_ttt.lit.cli import cli_main

REPO = Path(__file__).resolve().parents[2]
FRAGMENTS = sorted((REPO / "recipes" / "data").glob("*.yaml"))


def test_fragments_exist():
    assert {p.stem for p in FRAGMENTS} >= {"stdlib", "local", "pg19", "prepared"}


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=[p.stem for p in FRAGMENTS])
def test_data_fragment_loads_through_the_cli(fragment: Path) -> None:
    cli = cli_main(["--config", str(REPO / "recipes/debug/e2e.yaml"), "--config", str(fragment)], run=False)
    spec = yaml.safe_load(fragment.read_text())
    assert set(spec) == {"data"}  # a fragment only sets data
    for key, value in spec["data"].items():
        assert cli.datamodule.hparams[key] == value, key
    assert cli.model.hparams.seq_len == cli.datamodule.seq_len == 512  # kept from the model recipe
    assert (cli.model.cfg.vocab_size, cli.model.cfg.bos_id, cli.model.cfg.eos_id) == (
        cli.datamodule.vocab_size, cli.datamodule.bos_id, cli.datamodule.eos_id)  # linked from the tokenizer
