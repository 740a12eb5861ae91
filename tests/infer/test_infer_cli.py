"""`ttt export` and `ttt generate` on a checkpoint made by a real Trainer."""

from __future__ import annotations

import io
import sys

import pytest
import torch
from safetensors.torch import load_file

from lightning_ttt.cli import main
from lightning_ttt.infer import Generator, SamplingConfig
from lightning_ttt.infer.loading import load_checkpoint, load_model_dir
from tiny_models import one_step_checkpoint  # tests/tiny_models.py


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return one_step_checkpoint(tmp_path_factory.mktemp("ckpt") / "debug-e2e.ckpt")


def _run(argv, stdin: bytes = b"", capsys=None, monkeypatch=None):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_export_roundtrip(ckpt, tmp_path, capsys, monkeypatch):
    code, _, err = _run(["export", str(ckpt), "--out", str(tmp_path / "model")], capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    a, b = load_checkpoint(ckpt).model, load_model_dir(tmp_path / "model").model
    assert a.cfg == b.cfg
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert set(load_file(str(tmp_path / "model" / "model.safetensors"))) == set(a.state_dict())
    prompt = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(1))
    greedy = SamplingConfig(greedy=True)
    assert torch.equal(Generator(a).generate(prompt, 5, greedy).tokens, Generator(b).generate(prompt, 5, greedy).tokens)
    code, _, err = _run(["export", str(ckpt), "--out", str(tmp_path / "model")], capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and "already exists" in err


def test_generate_streams_text(ckpt, tmp_path, capsys, monkeypatch):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Once upon a time " * 5)
    code, out, err = _run(["generate", "--ckpt", str(ckpt), "--prompt-file", str(prompt), "--max-new-tokens", "40",
                           "--temperature", "0.8", "--top-k", "50", "--top-p", "0.9", "--repetition-penalty", "1.1",
                           "--seed", "0", "--no-stop"], capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0, err
    assert out.endswith("\n") and len(out.encode("utf-8", "surrogatepass")) > 1
    assert "prefill:" in err and "tokens/s" in err and "decode: 40 tokens" in err
    code, out, err = _run(["generate", "--ckpt", str(ckpt), "--max-new-tokens", "3", "--greedy"],
                          stdin=b"hello", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0, err


@pytest.mark.parametrize("args, stdin, message", [
    (["--max-new-tokens", "5"], b"", "prompt is empty"),
    (["--max-new-tokens", "5", "--ids"], b"1 2 999", "outside the vocabulary"),
    (["--max-new-tokens", "0"], b"hi", "--max-new-tokens=0"),
])
def test_generate_bad_input(ckpt, args, stdin, message, capsys, monkeypatch):
    code, _, err = _run(["generate", "--ckpt", str(ckpt), *args], stdin=stdin, capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_generate_rejects_foreign_checkpoints(ckpt, tmp_path, capsys, monkeypatch):
    raw = torch.load(ckpt, weights_only=True)
    raw["hyper_parameters"]["method"] = "swa"  # e2e weights, swa config: prime MLPs are unexpected
    torch.save(raw, tmp_path / "other.ckpt")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "plain.ckpt")
    for name, message in (("other.ckpt", "another architecture"), ("plain.ckpt", "not a lightning_ttt checkpoint"),
                          ("missing.ckpt", "does not exist")):
        code, _, err = _run(["generate", "--ckpt", str(tmp_path / name), "--max-new-tokens", "2"], stdin=b"hi",
                            capsys=capsys, monkeypatch=monkeypatch)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow  # a subprocess per measurement
def test_bench_writes_table_json_and_plot(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench"
    code, table, err = _run(["bench", "--methods", "fa", "e2e", "--lengths", "128", "256", "--window", "64",
                             "--mini-batch", "32", "--decode", "4", "--piece", "96", "--out", str(out),
                             "--tensorboard", str(tmp_path / "tb")], capsys=capsys, monkeypatch=monkeypatch)
    assert code == 0, err
    import json

    rows = json.loads(out.with_suffix(".json").read_text())
    assert [(r["method"], r["context"]) for r in rows] == [("fa", 128), ("e2e", 128), ("fa", 256), ("e2e", 256)]
    assert out.with_suffix(".png").stat().st_size > 0 and any((tmp_path / "tb").iterdir())
    assert "prefill s/1K" in table
    assert "weights: random (preset debug; speed and memory only)" in table
    assert all(r["weights"].startswith("random") for r in rows)
    assert "bench: 100%" in err and "4/4" in err  # the progress bar, on stderr
