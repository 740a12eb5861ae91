"""RULER S-NIAH tasks: deterministic, exact-length prompts; scoring; the inside/outside split; `ttt niah`."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch

from lightning_ttt.cli import main
from lightning_ttt.data.tokenizer import ByteTokenizer
from lightning_ttt.eval.niah import (TASKS, inside_window, make_sample, make_samples, score, summarize)
from tiny_models import one_step_checkpoint  # tests/tiny_models.py

TOK = ByteTokenizer()


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _grid(seed=0, window=64, lengths=(200, 333), depths=(0.0, 0.5, 1.0), samples=2):
    return make_samples(TASKS, lengths, depths, samples, seed, TOK, window)


def test_deterministic_for_a_seed():
    a, b, c = _grid(seed=3), _grid(seed=3), _grid(seed=4)
    assert a == b
    assert [s.value for s in a] != [s.value for s in c]
    assert len({s.value for s in a}) == len(a)  # different samples draw different needles


def test_lengths_exact_in_tokens_and_needle_in_place():
    for s in _grid(lengths=(200, 257, 512)):
        assert len(s.prompt) == s.length
        assert s.prompt[0] == TOK.bos_id
        needle = TOK.decode(s.prompt[s.needle_start:s.needle_end])
        assert s.value in needle and s.key in needle
        question = TOK.decode(s.prompt[-80:])
        assert s.key in question and question.endswith("is:")
        if s.task == "niah_3":
            assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", s.value)
        else:
            assert re.fullmatch(r"\d{7}", s.value)
    shallow, deep = (make_sample("niah_1", 400, d, 0, 0, TOK, None, None) for d in (0.0, 1.0))
    header = len(TOK.encode("Remember the magic number hidden in this text.\n")) + 1
    assert shallow.needle_start == header  # depth 0: right after the header
    assert TOK.decode(deep.prompt[deep.needle_end:]).startswith("\nThe special magic number")  # depth 1: at the end
    with pytest.raises(ValueError, match="too short"):
        make_sample("niah_1", 60, 0.5, 0, 0, TOK, None, None)


def test_oracle_scores_one_and_constant_scores_zero():
    samples = _grid()

    def oracle(s):  # reads the needle back from the prompt, as a perfect retriever would
        return " " + TOK.decode(s.prompt[s.needle_start:s.needle_end]).split(" is: ")[1].rstrip(". ")

    rows = score(samples, oracle)
    assert all(r["correct"] for r in rows)
    assert all(r["acc_all"] == 1.0 for r in summarize(rows))
    rows = score(samples, lambda s: " 1234567")
    assert not any(r["correct"] for r in rows)
    assert all(r["acc_all"] == 0.0 for r in summarize(rows))


def test_inside_outside_split():
    assert inside_window(200, 256, 64) and inside_window(192, 256, 64) and not inside_window(191, 256, 64)
    assert inside_window(0, 10_000, None)  # full attention: always inside
    samples = make_samples(["niah_1"], [256], [0.0, 1.0], 1, 0, TOK, window=128)
    first, last = samples
    assert not first.inside and last.inside
    assert first.needle_start < 256 - 128 <= last.needle_start
    rows = score(samples, lambda s: s.value if s.inside else "nothing")  # a model that only sees the window
    by = {r["depth"]: r for r in summarize(rows)}
    assert (by["all"]["n_inside"], by["all"]["acc_inside"]) == (1, 1.0)
    assert (by["all"]["n_outside"], by["all"]["acc_outside"]) == (1, 0.0)
    assert by["all"]["acc_all"] == 0.5 and by[0.0]["acc_inside"] == ""
    assert all(s.inside for s in make_samples(["niah_1"], [256], [0.0, 1.0], 1, 0, TOK, window=None))


def test_command_on_debug_checkpoint(tmp_path, capsys):
    ckpt = one_step_checkpoint(tmp_path / "debug-e2e.ckpt")
    out, tb = tmp_path / "niah", tmp_path / "tb"
    code = main(["niah", "--ckpt", str(ckpt), "--lengths", "192", "256", "--depths", "0", "1", "--samples", "1",
                 "--window", "128", "--out", str(out), "--tensorboard", str(tb), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "| niah_1 | 256 |" in captured.out
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 2 * 2 and all(isinstance(r["correct"], bool) for r in rows)
    assert {r["inside"] for r in rows if r["length"] == 256 and r["task"] == "niah_1"} == {True, False}
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert {"task", "length", "depth", "acc_all", "acc_inside", "acc_outside"} <= set(summary[0])
    assert len(summary) == 3 * 2 * 3  # (2 depths + "all") per task and length
    for task in TASKS:
        assert (out / f"heatmap_{task}.png").read_bytes()[:4] == b"\x89PNG"
    assert any(tb.iterdir())
    code = main(["niah", "--ckpt", str(ckpt), "--lengths", "40", "--tasks", "niah_1", "--out", str(out)])
    assert code == 2 and "too short" in capsys.readouterr().err
