"""An imported model where a checkpoint is accepted: generate, niah, eval-context, bench, and
`ttt fit` starting from it through `model.init_from` (and `model.preset`) = the directory."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from authors_fixture import REFERENCE
from lightning_ttt.cli import main
from lightning_ttt.data.datamodule import LongContextDataModule
from lightning_ttt.infer import Generator, SamplingConfig
from lightning_ttt.infer.loading import load_checkpoint, load_model_dir
from lightning_ttt.lit.module import TTTLanguageModel, load_weights
from lightning_ttt.ttt.objective import lm_loss
from lightning_ttt.ttt.update import make_update

REPO = Path(__file__).resolve().parents[2]


def _cli(capsys, monkeypatch, *argv: str, stdin: bytes = b"") -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------- generation and needle retrieval
def test_generate_ids_and_text(imported, word_tokenizer, capsys, monkeypatch):
    prompt = torch.randint(3, 256, (1, 20), generator=torch.Generator().manual_seed(0))
    code, out, err = _cli(capsys, monkeypatch, "generate", "--model-dir", str(imported), "--ids", "--no-bos", "--greedy",
                          "--max-new-tokens", "6", "--no-stop", stdin=" ".join(map(str, prompt[0].tolist())).encode())
    assert code == 0, err
    loaded = load_model_dir(imported)
    expected = Generator(loaded.model, loaded.update).generate(prompt, 6, SamplingConfig(greedy=True))
    assert [int(tok) for tok in out.split()] == expected.tokens[0].tolist()  # no tokenizer recorded: ids out
    code, _, err = _cli(capsys, monkeypatch, "generate", "--model-dir", str(imported), "--max-new-tokens", "2",
                        stdin=b"w5 w6")
    assert code == 2 and "records no tokenizer; pass --tokenizer" in err and len(err.strip().splitlines()) == 1
    code, out, err = _cli(capsys, monkeypatch, "generate", "--model-dir", str(imported), "--tokenizer",
                          str(word_tokenizer), "--max-new-tokens", "4", "--greedy", "--no-stop",
                          stdin=b"w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18 w19 w20 w21")
    assert code == 0, err
    assert len(out.split()) == 4 and all(word.startswith("w") for word in out.split())
    code, _, err = _cli(capsys, monkeypatch, "generate", "--model-dir", str(imported), "--tokenizer", "bytes",
                        "--max-new-tokens", "2", stdin=b"hi")
    assert code == 2 and "does not fit the model (vocab_size 256, BOS 1, EOS 2)" in err


def test_niah_with_a_tokenizer(imported, word_tokenizer, tmp_path, capsys, monkeypatch):
    base = ("niah", "--model-dir", str(imported), "--lengths", "160", "--tasks", "niah_1", "--samples", "2",
            "--answer-tokens", "8", "--no-progress")
    code, out, err = _cli(capsys, monkeypatch, *base, "--tokenizer", str(word_tokenizer), "--out", str(tmp_path / "n"))
    assert code == 0, err
    assert "tiny-e2e (method e2e, window 32)" in out
    rows = [json.loads(line) for line in (tmp_path / "n" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(row["length"] == 160 for row in rows)
    code, _, err = _cli(capsys, monkeypatch, *base, "--out", str(tmp_path / "n2"))
    assert code == 2 and "records no tokenizer" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- evaluation and speed
def _data_yaml(path: Path, corpus: Path, tokenizer: Path | None) -> Path:
    data = {"sources": [str(corpus)], "val_sources": [str(corpus)], "min_doc_tokens": 0}
    if tokenizer is not None:
        data["tokenizer"] = str(tokenizer)
    path.write_text(yaml.safe_dump({"data": data}))
    return path


def test_eval_context_on_a_model_directory(imported, word_tokenizer, word_corpus, tmp_path, capsys, monkeypatch):
    data = _data_yaml(tmp_path / "data.yaml", word_corpus, word_tokenizer)
    code, out, err = _cli(capsys, monkeypatch, "eval-context", "--model-dir", str(imported), "--lengths", "32", "64",
                          "--data-config", str(data), "--out", str(tmp_path / "ctx"), "--tokens-per-length", "128",
                          "--batch-tokens", "128", "--accelerator", "cpu", "--no-progress")
    assert code == 0, err
    result = json.loads((tmp_path / "ctx" / "context_eval.json").read_text())
    assert result["method"] == "e2e" and result["window"] == 32 and [r["seq_len"] for r in result["rows"]] == [32, 64]
    loaded = load_model_dir(imported)
    for row in result["rows"]:  # the same windows evaluated directly: same loss
        length = row["seq_len"]
        dm = LongContextDataModule(sources=[str(word_corpus)], val_sources=[str(word_corpus)], min_doc_tokens=0,
                                   tokenizer=str(word_tokenizer), seq_len=length, max_val_windows=128 // length,
                                   batch_size=128 // length)
        dm.setup("validate")
        (batch,) = list(dm.val_dataloader())
        out_ = lm_loss(loaded.model, batch["input_ids"], batch["targets"], batch["loss_mask"], ttt=True,
                       update=loaded.update)
        assert row["loss"] == pytest.approx(float(out_.chunk_loss.mean()), abs=1e-5)
    no_tok = _data_yaml(tmp_path / "notok.yaml", word_corpus, None)
    for args, message in ((["--data-config", str(no_tok)], "records no tokenizer; set data.tokenizer"),
                          ([], "--model-dir needs --data-config"),
                          (["--data-config", str(data), "--method", "swa"], "only fa and swa weights")):
        code, _, err = _cli(capsys, monkeypatch, "eval-context", "--model-dir", str(imported), "--lengths", "32",
                            "--out", str(tmp_path / "bad"), *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow  # a subprocess per measurement
def test_bench_on_a_model_directory(imported, tmp_path, capsys, monkeypatch):
    code, table, err = _cli(capsys, monkeypatch, "bench", "--model-dir", str(imported), "--lengths", "64", "--decode",
                            "3", "--piece", "48", "--out", str(tmp_path / "bench"))
    assert code == 0, err
    (row,) = json.loads((tmp_path / "bench.json").read_text())
    assert (row["method"], row["context"], row["window"], row["mini_batch"]) == ("e2e", 64, 32, 16)
    code, _, err = _cli(capsys, monkeypatch, "bench", "--model-dir", str(imported), "--methods", "fa", "--out",
                        str(tmp_path / "b2"))
    assert code == 2 and "is method e2e; only fa and swa weights are interchangeable" in err


# ---------------------------------------------------------------- fine-tuning from the directory
def test_one_training_step_starts_from_the_imported_weights(imported):
    with np.load(REFERENCE) as ref:
        ids, targets = torch.as_tensor(ref["input_ids"]).long(), torch.as_tensor(ref["target_tokens"]).long()
        mask = torch.as_tensor(ref["loss_masks"])
    batch = [{"input_ids": ids[i], "targets": targets[i], "loss_mask": mask[i]} for i in range(2)]
    module = TTTLanguageModel(preset=str(imported), method="e2e", seq_len=64, init_from=str(imported), lr=1e-3)
    assert module.hparams.preset is None and module.hparams.config["d_model"] == 64  # self-contained
    imported_state = load_model_dir(imported).model.state_dict()
    assert not torch.equal(module.model.embed.weight, imported_state["embed.weight"])  # random until fit starts

    class Check(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            for name, tensor in pl_module.model.state_dict().items():
                assert torch.equal(tensor, imported_state[name]), name

    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", callbacks=[Check()])
    trainer.fit(module, torch.utils.data.DataLoader(batch, batch_size=2))
    model = load_model_dir(imported).model  # the directory's inner-lr warm-up (0.1 over 480 steps) applies at step 0
    expected = lm_loss(model, ids, targets, mask, ttt=True, update=make_update(module.cfg, outer_step=0))
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(float(expected.loss), abs=1e-5)
    assert not torch.equal(module.model.embed.weight, imported_state["embed.weight"])  # one AdamW step taken


def test_fit_command_from_the_directory(imported, word_tokenizer, word_corpus, tmp_path, capsys, monkeypatch):
    model_dir = shutil.copytree(imported, tmp_path / "released")
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 1, "limit_val_batches": 1,
                    "num_sanity_val_steps": 0, "enable_progress_bar": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs"), "name": "ft"}},
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"save_last": True, "every_n_train_steps": 1}}]},
        "model": {"preset": str(model_dir), "method": "e2e", "init_from": str(model_dir), "lr": 1e-4},
        "data": {"sources": [str(word_corpus)], "val_sources": [str(word_corpus)], "tokenizer": str(word_tokenizer),
                 "seq_len": 64, "batch_size": 2, "max_val_windows": 2, "min_doc_tokens": 0, "num_workers": 0}}))
    code = main(["fit", "--config", str(REPO / "recipes/debug/e2e.yaml"), "--config", str(run)])
    assert code == 0
    (last,) = (tmp_path / "runs").rglob("last.ckpt")
    shutil.rmtree(model_dir)  # the checkpoint records the architecture itself
    loaded = load_checkpoint(last)
    assert loaded.model.cfg.architecture_differences(load_model_dir(imported).model.cfg) == []
    assert loaded.tokenizer == str(word_tokenizer)


def test_init_from_a_directory_checks_the_architecture(imported, tmp_path):
    module = TTTLanguageModel(preset="debug", method="e2e", seq_len=64, vocab_size=256, bos_id=1, eos_id=2)
    with pytest.raises(ValueError, match=r"differs from the directory's in d_model=128 \(directory: 64\), "
                                         r"mlp_hidden=320 \(directory: 96\), suffix_len=1 \(directory: 2\)") as err:
        load_weights(module, str(imported))
    assert "set model.preset:" in str(err.value) and "\n" not in str(err.value)
    # run settings may differ: another window and mini-batch load the same weights
    other = TTTLanguageModel(preset=str(imported), method="e2e", seq_len=64, config={"window": 64, "mini_batch": 32})
    load_weights(other, str(imported))
    assert torch.equal(other.model.embed.weight, load_model_dir(imported).model.embed.weight)
    with pytest.raises(ValueError, match="model.method=swa but the exported model .* is method e2e"):
        TTTLanguageModel(preset=str(imported), method="swa", seq_len=64)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"model\.init_from=.*empty: .*is not an exported model directory"):
        load_weights(module, str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="no such checkpoint or exported model directory"):
        load_weights(module, str(tmp_path / "absent"))
