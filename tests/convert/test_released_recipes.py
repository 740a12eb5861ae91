"""recipes/released: extension fragments stack on the paper's recipes; the eval-context data fragment loads
(with local stand-ins for the gated tokenizer and the corpus)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from authors_fixture import COMMON, RELEASED
from lightning_ttt.convert.authors_config import model_config_from_authors
from lightning_ttt.data.datamodule import LongContextDataModule
from lightning_ttt.eval.context import data_settings
from lightning_ttt.lit.cli import cli_main

REPO = Path(__file__).resolve().parents[2]
RELEASED_RECIPES = REPO / "recipes" / "released"


def test_every_released_recipe_is_tested_here():
    assert sorted(p.name for p in RELEASED_RECIPES.glob("*.yaml")) == [
        "books-8k-125m.yaml", "books-8k-1b.yaml", "books-8k-3b.yaml", "long-documents.yaml"]


@pytest.mark.parametrize("size", sorted(RELEASED))
@pytest.mark.parametrize("length", ["32K", "128K"])
def test_extension_from_the_released_model_stacks_on_the_paper_recipe(size, length):
    with torch.device("meta"):  # no 3B model in memory, no gated tokenizer (bytes), no GPU
        cli = cli_main(["--config", str(REPO / f"recipes/paper/ext-{size}-e2e-{length}.yaml"),
                        "--config", str(RELEASED_RECIPES / f"books-8k-{size}.yaml"), "--data.tokenizer=bytes",
                        "--trainer.accelerator=cpu", "--trainer.devices=1"], run=False)
    assert cli.model.hparams.init_from == f"released/{size}-books-8k"
    assert cli.datamodule.seq_len == {"32K": 32768, "128K": 131072}[length]
    released = model_config_from_authors({**COMMON, **RELEASED[size]})
    # what init_from will check against the imported directory (the vocabulary here is the bytes stand-in's)
    assert cli.model.cfg.replace(vocab_size=128256, bos_id=128000, eos_id=128001).architecture_differences(released) == []


def test_long_documents_fragment(word_corpus, word_tokenizer):
    settings = data_settings({}, str(RELEASED_RECIPES / "long-documents.yaml"))
    assert settings["tokenizer"] == "meta-llama/Meta-Llama-3-8B" and settings["sources"] == settings["val_sources"]
    dm = LongContextDataModule(**{**settings, "sources": [str(word_corpus)], "val_sources": [str(word_corpus)],
                                  "tokenizer": str(word_tokenizer), "seq_len": 64, "max_val_windows": 4})
    dm.setup("validate")
    assert next(iter(dm.val_dataloader()))["input_ids"].shape[1] == 64
