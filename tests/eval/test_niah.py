"""RULER S-NIAH: templates, haystacks, prompts within the budget, scoring, the window split, `ttt niah`."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_ttt.cli import main
from lightning_ttt.config import ModelConfig
from lightning_ttt.data.tokenizer import ByteTokenizer
from lightning_ttt.eval.niah.haystack import ESSAY, NOISE, essay_haystack, noise_haystack, split_sentences
from lightning_ttt.eval.niah.prompts import (ESSAY_DEPTHS, GRID, INSIDE, OUTSIDE, RANDOM, STRADDLING, TASKS,
                                             builders, iter_samples, region)
from lightning_ttt.eval.niah.report import summarize, wilson_interval, window_fraction
from lightning_ttt.eval.niah.run import evaluate, load_haystacks
from lightning_ttt.eval.niah.scoring import clean_prediction, score, string_match_all, window_oracle
from lightning_ttt.eval.niah.templates import Templates
from tiny_models import one_step_checkpoint  # tests/tiny_models.py

TOK = ByteTokenizer()
T = Templates()
PROSE = Path(__file__).resolve().parents[1] / "fixtures" / "niah"
UUID4 = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


@pytest.fixture(scope="module")
def haystacks():
    return {NOISE: noise_haystack(T.noise), ESSAY: essay_haystack([str(PROSE)])}


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _samples(haystacks, tasks=tuple(TASKS), lengths=(1024, 1500), samples=6, seed=0, window=None, **kw):
    return list(iter_samples(tasks, lengths, samples, seed, TOK, haystacks, T, window, **kw))


def _context(sample, templates=T):
    """The haystack text of a sample's prompt (between the task head and the question)."""
    text = TOK.decode(sample.prompt)
    kind, kinds = TASKS[sample.task].kinds
    head, tail = templates.head_and_tail(kind, kinds, sample.key)
    assert text.startswith(head) and text.endswith(tail)
    return text[len(head):len(text) - len(tail)]


def test_templates_default_to_rulers_wording_and_are_overridable(tmp_path, haystacks):
    head, tail = T.head_and_tail("number", "numbers", "calm-river")
    assert head.startswith("A special magic number is hidden within the following text.")
    assert tail == ("\nWhat is the special magic number for calm-river mentioned in the provided text?"
                    " The special magic number for calm-river mentioned in the provided text is")
    assert T.needle.format(types="uuids", key="k", value="v") == "One of the special magic uuids for k is: v."
    override = tmp_path / "t.yaml"
    override.write_text("answer_prefix: ' Answer:'\nneedle: 'Remember {key} = {value}.'\n")
    custom = Templates.load(override)
    assert custom.task == T.task and custom.answer_prefix == " Answer:"
    sample = next(iter_samples(["niah_1"], [800], 1, 0, TOK, haystacks, custom, None))
    text = TOK.decode(sample.prompt)
    assert text.endswith(" Answer:") and f"Remember {sample.key} = {sample.values[0]}." in text
    for bad, message in (("needle: 'no key {value}'", "must contain {key}"), ("task: 'x {key}'", "{context}"),
                         ("answer_prefix: '{value}'", "uses {value}"), ("colour: red", "expected a mapping")):
        override.write_text(bad)
        with pytest.raises(ValueError, match=re.escape(message)):
            Templates.load(override)


def test_deterministic_per_seed_and_independent_of_the_sample_count(haystacks):
    a, b, c = _samples(haystacks, seed=3), _samples(haystacks, seed=3), _samples(haystacks, seed=4)
    assert a == b and all(np.array_equal(x.prompt, y.prompt) for x, y in zip(a, b))
    assert [s.values for s in a] != [s.values for s in c]
    more = _samples(haystacks, seed=3, samples=9)
    assert [s.key for s in more if s.index < 6] == [s.key for s in a]


def test_prompts_fit_the_budget_with_rulers_needles(haystacks):
    for answer_tokens in (128, 32):
        for s in _samples(haystacks, lengths=(900, 2048), answer_tokens=answer_tokens):
            assert s.prompt[0] == TOK.bos_id and s.prompt_tokens == len(s.prompt)
            assert s.prompt_tokens + answer_tokens <= s.length  # RULER: prompt + answer budget within the length
            unit = 95 if s.task == "niah_1" else 400  # the haystack is as long as whole units allow for the
            longest_key = 33  # longest key ("disillusioned-cross-contamination"), which appears 3 times
            assert s.prompt_tokens + answer_tokens > s.length - unit - 3 * (longest_key - len(s.key))
            needle = TOK.decode(s.prompt[s.needle_start:s.needle_end]).strip()
            kinds = TASKS[s.task].kinds[1]
            assert needle == f"One of the special magic {kinds} for {s.key} is: {s.values[0]}."
            assert re.fullmatch(r"[A-Za-z' ]+-[A-Za-z' ]+", s.key)
            assert re.fullmatch(UUID4 if s.task == "niah_3" else r"[1-9]\d{6}", s.values[0])
    builder = builders(["niah_3"], [2048], TOK, haystacks, T, None, 128)[("niah_3", 2048)]
    longest = "disillusioned-cross-contamination"
    assert builder._over(longest, "x" * 36, builder.units) <= 0 < builder._over(longest, "x" * 36, builder.units + 1)
    with pytest.raises(ValueError, match="too short for task niah_2"):
        _samples(haystacks, tasks=["niah_2"], lengths=[400])


def test_noise_haystack_and_essay_needles_sit_between_whole_sentences(haystacks):
    prose = re.sub(r"\s+", " ", " ".join(p.read_text() for p in sorted(PROSE.glob("*.txt"))))
    for s in _samples(haystacks, samples=10):
        context = _context(s)
        needle = TOK.decode(s.prompt[s.needle_start:s.needle_end]).strip()
        sep = "\n" if s.task == "niah_1" else " "
        parts = context.split(needle)
        assert len(parts) == 2
        before, after = parts[0].removesuffix(sep), parts[1].removeprefix(sep)
        if s.task == "niah_1":
            assert all(line == T.noise for line in (before.split("\n") if before else []) + after.split("\n"))
        else:  # prose, cut only at sentence ends: each side is a run of whole sentences of the essays
            assert not before or before[-1] in ".?!\"'"
            assert not after or after[0].isupper()
            for sentence in split_sentences(before) + split_sentences(after):
                assert sentence in prose


def test_random_depths_spread_over_the_haystack_and_grid_depths_are_exact(haystacks):
    noise = _samples(haystacks, tasks=["niah_1"], lengths=[4096], samples=200)
    depths = np.array([s.depth for s in noise])
    assert depths.min() < 0.05 and depths.max() > 0.95 and abs(np.median(depths) - 0.5) < 0.1
    assert all(s.requested_depth is None and s.placement == RANDOM for s in noise)
    essay = _samples(haystacks, tasks=["niah_2"], lengths=[4096], samples=100)
    for s in essay:  # one of RULER's 40 depths, rounded down to a sentence
        assert any(int(s.units * d) == round(s.depth * s.units) for d in ESSAY_DEPTHS)
    assert len({round(s.depth, 2) for s in essay}) > 20
    grid = _samples(haystacks, tasks=["niah_1", "niah_3"], lengths=[2048], samples=0, depths=[0.0, 0.5, 1.0],
                    depth_samples=3)
    assert len(grid) == 2 * 3 * 3 and all(s.placement == GRID for s in grid)
    for s in grid:
        assert abs(s.depth - s.requested_depth) <= 1 / s.units
    assert _context(grid[0]).startswith("One of the special magic")  # depth 0: first in the haystack


def test_string_match_all_is_case_insensitive_over_every_value():
    assert string_match_all(" 5A0C1D2E-AAAA-4BBB-8CCC-0123456789AB.", ["5a0c1d2e-aaaa-4bbb-8ccc-0123456789ab"]) == 1
    assert string_match_all("the number is 1234567", ["1234567", "7654321"]) == 0.5
    assert string_match_all("123456", ["1234567"]) == 0
    assert clean_prediction("  12\x0034\t ") == "12\n34"


def test_region_split():
    assert region(200, 230, 256, 64) == INSIDE and region(192, 230, 256, 64) == INSIDE
    assert region(180, 200, 256, 64) == STRADDLING and region(150, 192, 256, 64) == OUTSIDE
    assert region(0, 10, 10_000, None) == INSIDE  # full attention


def test_wilson_interval_and_window_share():
    low, high = wilson_interval(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)
    low, high = wilson_interval(0, 500)
    assert low == pytest.approx(0, abs=1e-12) and 0.007 < high < 0.008
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert window_fraction(131072, 8192) == 0.0625 and window_fraction(4096, 8192) == 1
    assert window_fraction(9, None) == 1


@pytest.mark.parametrize("task", ["niah_1", "niah_2"])
def test_window_oracle_scores_the_share_of_the_context_in_its_window(haystacks, task):
    length, window, n = 16384, 4096, 400
    result = evaluate(window_oracle(TOK, T, window), TOK, window, [task], [length], haystacks, samples=n, seed=1)
    record, = result.summary[RANDOM]
    assert record["n"] == n and record["window_fraction"] == 0.25
    assert record["ci_low"] <= 0.25 <= record["ci_high"], record  # the paper's expectation for fixed-state models
    assert record["acc_inside"] == 1.0 and record["acc_outside"] == 0.0
    assert record["n_inside"] + record["n_straddling"] + record["n_outside"] == n
    assert record["acc_straddling"] in (None, 0.0)  # it needs the whole needle in view
    seeing_all = evaluate(window_oracle(TOK, T, None), TOK, window, [task], [length], haystacks, samples=100)
    assert seeing_all.summary[RANDOM][0]["accuracy"] == 1.0


def test_summary_counts_regions_and_grid_cells(haystacks):
    samples = _samples(haystacks, tasks=["niah_1"], lengths=[2048], samples=40, window=512, depths=[0.0, 1.0],
                       depth_samples=2)
    rows = score(samples, lambda prompt: "")
    for row, s in zip(rows, samples):
        row["score"] = float(s.region == INSIDE)  # what a window-only reader would score
    summary = summarize(rows, 512)
    record, = summary[RANDOM]
    inside = sum(s.region == INSIDE for s in samples if s.placement == RANDOM)
    assert record["accuracy"] == inside / 40 and record["n_inside"] == inside and record["acc_inside"] == 1.0
    assert [(g["depth"], g["n"], g["accuracy"]) for g in summary[GRID]] == [(0.0, 2, 0.0), (1.0, 2, 1.0)]


def test_haystack_sources_and_refusals(tmp_path):
    single = essay_haystack([str(PROSE / "walking.txt")])
    assert single.units[0].startswith("On Walking to Work") and single.separator == " "
    records = tmp_path / "essays.jsonl"
    records.write_text("".join(json.dumps({"body": p.read_text()}) + "\n" for p in sorted(PROSE.glob("*.txt"))))
    from_jsonl = essay_haystack([str(records)], text_field="body")
    assert from_jsonl.units == essay_haystack([str(PROSE)]).units
    hub = tmp_path / "hub"  # a local directory laid out like a hub dataset, read through `datasets` offline
    hub.mkdir()
    (hub / "train.jsonl").write_text(records.read_text())
    assert essay_haystack([f"hf:{hub}"], text_field="body").units == from_jsonl.units
    with pytest.raises(ValueError, match="source code, not prose"):
        essay_haystack(["stdlib"])
    with pytest.raises(FileNotFoundError):
        essay_haystack([str(tmp_path / "missing.txt")])
    with pytest.raises(ValueError, match="give --haystack"):
        load_haystacks(["niah_1", "niah_3"], None, T)
    assert set(load_haystacks(["niah_1"], None, T)) == {NOISE}


@pytest.mark.slow  # export, two NIAH runs end to end
def test_command_on_debug_checkpoint(tmp_path, capsys):
    ckpt = one_step_checkpoint(tmp_path / "debug-e2e.ckpt")
    export = tmp_path / "exported"
    assert main(["export", str(ckpt), "--out", str(export)]) == 0
    out, tb = tmp_path / "niah", tmp_path / "tb"
    code = main(["niah", "--ckpt", str(ckpt), "--lengths", "640", "768", "--samples", "2", "--depths", "0", "1",
                 "--depth-samples", "1", "--answer-tokens", "8", "--window", "256", "--haystack", str(PROSE),
                 "--out", str(out), "--tensorboard", str(tb), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "| niah_3 | 768 |" in captured.out and "95% Wilson" in captured.out
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 2 * (2 + 2) and all(0 <= r["score"] <= 1 for r in rows)
    assert all(r["prompt_tokens"] + 8 <= r["length"] for r in rows)
    accuracy = list(csv.DictReader(open(out / "accuracy.csv")))
    assert len(accuracy) == 3 * 2
    assert {"accuracy", "ci_low", "ci_high", "window_fraction", "acc_inside", "acc_straddling", "acc_outside"} \
        <= set(accuracy[0])
    assert float(accuracy[0]["window_fraction"]) == 256 / 640
    assert len(list(csv.DictReader(open(out / "depth_grid.csv")))) == 3 * 2 * 2
    about = json.loads((out / "summary.json").read_text())
    assert about["method"] == "e2e" and about["window"] == 256 and about["haystack"] == str(PROSE)
    for name in ("accuracy", "heatmap_niah_1", "heatmap_niah_2", "heatmap_niah_3"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert any(tb.iterdir())
    records, override = tmp_path / "essays.jsonl", tmp_path / "templates.yaml"
    records.write_text("".join(json.dumps({"body": p.read_text()}) + "\n" for p in sorted(PROSE.glob("*.txt"))))
    override.write_text("answer_prefix: ' Answer:'\n")
    code = main(["niah", "--model-dir", str(export), "--lengths", "700", "--tasks", "niah_2", "--samples", "1",
                 "--answer-tokens", "4", "--haystack", str(records), "--text-field", "body", "--templates",
                 str(override), "--seed", "5", "--device", "cpu", "--threads", "1", "--out", str(tmp_path / "other"),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    about = json.loads((tmp_path / "other" / "summary.json").read_text())
    assert about["templates"]["answer_prefix"] == " Answer:" and about["seed"] == 5 and about["method"] == "e2e"
    assert about["window"] == ModelConfig.from_preset("debug", "e2e").attention_window  # the model's window
    assert about["random"][0]["n"] == 1 and not (tmp_path / "other" / "depth_grid.csv").exists()
    summary = (out / "summary.json").read_text()
    again = ["niah", "--ckpt", str(ckpt), "--lengths", "640", "--tasks", "niah_1", "--samples", "1",
             "--answer-tokens", "4", "--out", str(out), "--no-progress"]
    code = main(again)
    err = capsys.readouterr().err
    assert code == 2 and f"--out {out} is not empty; pass --overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "summary.json").read_text() == summary
    assert main([*again, "--overwrite"]) == 0, capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["random"][0]["n"] == 1
    assert not (out / "depth_grid.csv").exists() and not (out / "heatmap_niah_3.png").exists()  # nothing stale
    code = main(["niah", "--ckpt", str(ckpt), "--lengths", "300", "--tasks", "niah_1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "too short" in err and len(err.strip().splitlines()) == 1
    code = main(["niah", "--ckpt", str(ckpt), "--lengths", "1024", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "give --haystack" in err and len(err.strip().splitlines()) == 1
    code = main(["niah", "--ckpt", str(ckpt), "--lengths", "1024", "--tasks", "niah_9"])
    err = capsys.readouterr().err
    assert code == 2 and "--tasks" in err and "niah_1" in err and len(err.strip().splitlines()) == 1
    code = main(["niah", "--ckpt", str(ckpt), "--model-dir", str(export), "--lengths", "1024", "--tasks", "niah_1"])
    err = capsys.readouterr().err
    assert code == 2 and "--model-dir" in err and len(err.strip().splitlines()) == 1


def test_bpe_prompts_tokenize_like_their_text_and_the_oracle_reads_them(tmp_path, haystacks):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from lightning_ttt.data.tokenizer import load_tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([p.read_text() for p in PROSE.glob("*.txt")] + [T.task, T.needle, T.noise], trainer)
    bpe.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(str(tmp_path / "tokenizer.json"))
    samples = list(iter_samples(list(TASKS), [1024], 20, 0, tok, haystacks, T, 256, answer_tokens=128))
    for s in samples:
        assert s.prompt_tokens + 128 <= 1024 and s.prompt[0] == tok.bos_id
        assert tok.encode(tok.decode(s.prompt)).tolist() == s.prompt[1:].tolist()  # pieces join seamlessly
        assert tok.decode(s.prompt[s.needle_start:s.needle_end]).strip().endswith(f"is: {s.values[0]}.")
    rows = score(samples, window_oracle(tok, T, 256))
    assert {r["region"] for r in rows} >= {INSIDE, OUTSIDE}
    assert all(r["score"] == (r["region"] == INSIDE) for r in rows)


def test_threads_follow_the_load_unless_fixed(tmp_path, capsys, monkeypatch):
    import functools

    import lightning_ttt.eval.niah.run as run
    import lightning_ttt.threads as threads

    ckpt = one_step_checkpoint(tmp_path / "debug-e2e.ckpt")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "logical_cores", lambda: 2)
    monkeypatch.setattr(threads, "physical_cores", lambda: 2)
    readings = iter([2.0] + [0.0] * 9)  # busy when `ttt` starts (1 thread), idle from then on (2 threads)
    monkeypatch.setattr(threads.CpuMeter, "others", lambda self: next(readings))
    monkeypatch.setattr(run, "following_the_load", functools.partial(threads.following_the_load, every_s=0.0))
    args = ["niah", "--ckpt", str(ckpt), "--lengths", "640", "--tasks", "niah_1", "--samples", "3",
            "--answer-tokens", "4", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "ttt niah: 2 CPU threads instead of 1: other processes use 0.0 cores (--threads N fixes the count)" in err
    assert torch.get_num_threads() == 1  # set back to the count the evaluation started with
    assert main([*args, "--out", str(tmp_path / "b"), "--threads", "1"]) == 0
    assert "CPU thread" not in capsys.readouterr().err
