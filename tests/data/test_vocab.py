"""The model's vocabulary and BOS/EOS ids follow the data tokenizer through the CLI links."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_ttt.lit.cli import cli_main

E2E = str(Path(__file__).resolve().parents[2] / "recipes/debug/e2e.yaml")


def test_model_vocabulary_follows_the_tokenizer(bpe_path):
    cli = cli_main(["--config", E2E, "--data.tokenizer", str(bpe_path)], run=False)
    tok = cli.datamodule.tokenizer
    assert 300 < tok.vocab_size <= 400
    assert (cli.model.cfg.vocab_size, cli.model.cfg.bos_id, cli.model.cfg.eos_id) == (tok.vocab_size, 0, 1)
    assert cli.model.model.embed.weight.shape[0] == tok.vocab_size
    assert cli.model.hparams.vocab_size == tok.vocab_size  # saved, so load_from_checkpoint rebuilds it


def test_model_config_may_pad_the_vocabulary_but_not_contradict_it():
    cli = cli_main(["--config", E2E, "--model.config", '{"vocab_size": 320}'], run=False)
    assert cli.model.cfg.vocab_size == 320 and cli.datamodule.vocab_size == 258
    with pytest.raises(ValueError, match=r"model.config.vocab_size=100 is smaller than the tokenizer's vocabulary "
                                         r"\(258 ids, data.tokenizer\)"):
        cli_main(["--config", E2E, "--model.config", '{"vocab_size": 100}'], run=False)
    with pytest.raises(ValueError, match=r"model.config.bos_id=3 contradicts the tokenizer's bos_id=256"):
        cli_main(["--config", E2E, "--model.config", '{"bos_id": 3}'], run=False)
