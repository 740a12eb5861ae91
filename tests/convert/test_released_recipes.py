"""recipes/released: extension fragments stack on the paper's recipes; the eval-context data fragment and
the NIAH config load and run (with local stand-ins for the gated tokenizer and the corpus)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from authors_fixture import COMMON, RELEASED
from lightning_ttt.cli import main
from lightning_ttt.convert.authors_config import model_config_from_authors
from lightning_ttt.data.datamodule import LongContextDataModule
from lightning_ttt.eval.context import data_settings
from lightning_ttt.lit.cli import cli_main

REPO = Path(__file__).resolve().parents[2]
RELEASED_RECIPES = REPO / "recipes" / "released"


def test_every_released_recipe_is_tested_here():
    assert sorted(p.name for p in RELEASED_RECIPES.glob("*.yaml")) == [
        "books-8k-125m.yaml", "books-8k-1b.yaml", "books-8k-3b.yaml", "long-documents.yaml", "niah.yaml"]


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


def test_niah_config(imported, word_tokenizer, word_corpus, tmp_path, capsys):
    base = ["niah", "--config", str(RELEASED_RECIPES / "niah.yaml"), "--model-dir", str(imported), "--tokenizer",
            str(word_tokenizer), "--corpus", str(word_corpus), "--device", "cpu", "--lengths", "96", "--depths", "1",
            "--no-progress"]
    code = main([*base, "--tasks", "niah_1", "--samples", "1", "--out", str(tmp_path / "n"), "--tensorboard",
                 str(tmp_path / "tb")])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (tmp_path / "n" / "samples.jsonl").read_text().splitlines()]
    assert [(r["task"], r["length"]) for r in rows] == [("niah_1", 96)]
    config = yaml.safe_load((RELEASED_RECIPES / "niah.yaml").read_text())
    assert config["lengths"][-1] == 131072 and config["samples"] == 4  # flags above replaced these
    capsys.readouterr()
    bad = tmp_path / "bad.yaml"
    bad.write_text("lengths: [96]\nneedles: 3\n")
    assert main(["niah", "--config", str(bad), "--model-dir", str(imported)]) == 2
    assert "unknown option(s) needles" in capsys.readouterr().err
    assert main(["niah", "--config", str(tmp_path / "none.yaml"), "--model-dir", str(imported)]) == 2
    assert "none.yaml does not exist" in capsys.readouterr().err
