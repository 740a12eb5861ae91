"""Bad input, table-driven: every case exits 2 with exactly one line on stderr naming the setting or
file, and leaves every file written before it as it was (and writes none)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from tiny_models import one_step_checkpoint

from lightning_ttt.cli import main

REPO = Path(__file__).resolve().parents[1]
E2E = str(REPO / "recipes/debug/e2e.yaml")
AUTHORS_REFERENCE = str(REPO / "tests/fixtures/authors_checkpoint/reference.npz")
FIT = ["--config", E2E, "--trainer.threads=1", "--trainer.logger.init_args.save_dir={ws}/runs"]
slow = pytest.mark.slow  # builds a model through LightningCLI (a few seconds each)

CASES = [  # (id, argv, text the error line must contain)
    ("unknown-command", ["bogus"], "'bogus'"),
    pytest.param("fit-missing-config", ["fit", "--config", "{ws}/nope.yaml"], "nope.yaml", marks=slow),
    pytest.param("fit-malformed-yaml", ["fit", "--config", "{ws}/malformed.yaml"], "malformed.yaml: not valid YAML",
                 marks=slow),
    pytest.param("fit-unknown-key", ["fit", *FIT, "--config", "{ws}/badkey.yaml"], "bogus_key", marks=slow),
    pytest.param("fit-max-steps-negative", ["fit", *FIT, "--trainer.max_steps", "-5"], "max_steps", marks=slow),
    pytest.param("fit-lr-not-a-number", ["fit", *FIT, "--model.lr", "abc"], "--model.lr", marks=slow),
    pytest.param("fit-unknown-method", ["fit", *FIT, "--model.method", "mamba"], "--model.method", marks=slow),
    pytest.param("fit-bad-on-bad-record", ["fit", *FIT, "--data.on_bad_record", "ignore"], "data.on_bad_record",
                 marks=slow),
    pytest.param("fit-missing-data-file", ["fit", *FIT, "--data.sources", "[{ws}/nope.jsonl]"], "nope.jsonl",
                 marks=slow),
    pytest.param("fit-bad-record", ["fit", *FIT, "--data.sources", "[{ws}/bad.jsonl]"], "bad.jsonl:2", marks=slow),
    pytest.param("fit-corrupt-init-from", ["fit", *FIT, "--model.init_from", "{ws}/corrupt.ckpt"],
                 "model.init_from", marks=slow),
    pytest.param("fit-text-file-as-ckpt-path", ["fit", *FIT, "--ckpt_path", "{ws}/text.txt"], "--ckpt_path",
                 marks=slow),
    pytest.param("fit-ckpt-of-another-model", ["fit", *FIT, "--ckpt_path", "{ws}/fa.ckpt"], "model.method",
                 marks=slow),
    pytest.param("fit-unknown-nonfinite-policy", ["fit", *FIT, "--model.nonfinite", "maybe"], "model.nonfinite",
                 marks=slow),
    pytest.param("fit-seq-len-zero", ["fit", *FIT, "--data.seq_len", "0"], "data.seq_len", marks=slow),
    pytest.param("validate-missing-ckpt", ["validate", *FIT, "--ckpt_path", "{ws}/nope.ckpt"], "nope.ckpt",
                 marks=slow),
    pytest.param("plan-max-steps-negative", ["plan", "--config", E2E, "--trainer.max_steps", "-5"],
                 "--trainer.max_steps", marks=slow),
    ("generate-temperature-nan", ["generate", "--ckpt", "{ws}/e2e.ckpt", "--temperature", "nan"], "--temperature"),
    ("generate-top-p-above-one", ["generate", "--ckpt", "{ws}/e2e.ckpt", "--top-p", "2"], "--top-p"),
    ("generate-missing-ckpt", ["generate", "--ckpt", "{ws}/nope.ckpt"], "nope.ckpt"),
    ("generate-corrupt-ckpt", ["generate", "--ckpt", "{ws}/corrupt.ckpt"], "corrupt.ckpt"),
    ("generate-damaged-export", ["generate", "--model-dir", "{ws}/damaged"], "damaged/model.safetensors"),
    ("generate-export-config-not-json", ["generate", "--model-dir", "{ws}/badconfig"], "badconfig/config.json"),
    ("generate-ckpt-and-model-dir", ["generate", "--ckpt", "{ws}/e2e.ckpt", "--model-dir", "{ws}/export"],
     "--model-dir"),
    ("bench-length-zero", ["bench", "--lengths", "0", "--out", "{ws}/new-bench"], "--lengths"),
    ("bench-out-exists", ["bench", "--lengths", "64", "--out", "{ws}/bench"], "bench.json exists"),
    ("bench-damaged-export", ["bench", "--model-dir", "{ws}/damaged", "--lengths", "64", "--out", "{ws}/new-bench"],
     "damaged/model.safetensors"),
    ("verify-reference-text-file", ["verify-reference", "{ws}/text.txt"], "text"),
    ("verify-reference-missing", ["verify-reference", "{ws}/nope.npz"], "nope.npz"),
    ("verify-import-damaged-export", ["verify-import", "{ws}/damaged", AUTHORS_REFERENCE], "damaged"),
    ("export-out-exists", ["export", "{ws}/e2e.ckpt", "--out", "{ws}/export"], "export already exists"),
    ("export-corrupt-ckpt", ["export", "{ws}/corrupt.ckpt", "--out", "{ws}/new-export"], "corrupt.ckpt"),
    ("eval-context-out-not-empty", ["eval-context", "{ws}/e2e.ckpt", "--lengths", "64", "--out", "{ws}/results"],
     "--out"),
    ("eval-context-damaged-export", ["eval-context", "--model-dir", "{ws}/damaged", "--data-config", E2E,
                                     "--lengths", "64", "--out", "{ws}/new-eval"], "damaged/model.safetensors"),
    ("eval-context-length-zero", ["eval-context", "{ws}/e2e.ckpt", "--lengths", "0", "--out", "{ws}/new-eval"],
     "--lengths"),
    ("niah-length-zero", ["niah", "--ckpt", "{ws}/e2e.ckpt", "--lengths", "0", "--out", "{ws}/new-niah"], "--lengths"),
    ("niah-out-not-empty", ["niah", "--ckpt", "{ws}/e2e.ckpt", "--lengths", "1024", "--out", "{ws}/results"], "--out"),
    ("sweep-malformed-yaml", ["sweep", "{ws}/malformed.yaml"], "malformed.yaml: not valid YAML"),
    ("sweep-no-sweep-section", ["sweep", "{ws}/nosection.yaml"], "sweep:"),
    ("sweep-missing-file", ["sweep", "{ws}/nope.yaml"], "nope.yaml"),
    ("prepare-missing-source", ["prepare", "{ws}/nope.jsonl", "--out", "{ws}/prepared"], "nope.jsonl"),
    ("prepare-bad-record", ["prepare", "{ws}/bad.jsonl", "--out", "{ws}/prepared"], "bad.jsonl:2"),
    ("prepare-unknown-on-bad-record", ["prepare", "{ws}/bad.jsonl", "--out", "{ws}/prepared", "--on-bad-record",
                                       "maybe"], "--on-bad-record"),
    ("import-jax-missing-root", ["import-jax", "{ws}/nope", "--out", "{ws}/imported"], "nope"),
    ("convert-hf-missing-source", ["convert-hf", "{ws}/nope", "--out", "{ws}/converted", "--method", "e2e"], "nope"),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Files a user has written before: checkpoints, exports (one damaged), results, recipes, data."""
    ws = tmp_path_factory.mktemp("bad_input")
    one_step_checkpoint(ws / "e2e.ckpt")
    one_step_checkpoint(ws / "fa.ckpt", method="fa")
    assert main(["export", str(ws / "e2e.ckpt"), "--out", str(ws / "export")]) == 0
    for name in ("damaged", "badconfig"):
        shutil.copytree(ws / "export", ws / name)
    weights = ws / "damaged" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # a truncated copy
    (ws / "badconfig" / "config.json").write_text("{not json")
    (ws / "text.txt").write_text("just some text\n")
    (ws / "corrupt.ckpt").write_bytes(os.urandom(2000))
    (ws / "malformed.yaml").write_text("sweep:\n  name: x\n  methods: [fa, swa\n")
    (ws / "nosection.yaml").write_text("name: x\n")
    (ws / "badkey.yaml").write_text("model:\n  bogus_key: 1\n")
    (ws / "bad.jsonl").write_text('{"text": "ok ok ok"}\n{oops}\n')
    (ws / "results").mkdir()
    (ws / "results" / "old.json").write_text("{}")
    (ws / "bench.json").write_text("{}")
    return ws


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: content hash and modification time."""
    return {p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_table_has_at_least_30_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("name, argv, expected", [
    pytest.param(*c.values, id=c.values[0], marks=c.marks) if hasattr(c, "marks") else pytest.param(*c, id=c[0])
    for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(name, argv, expected, workspace, capfd, monkeypatch):
    monkeypatch.chdir(workspace)
    monkeypatch.setattr("sys.stdin", open(os.devnull))  # a command reaching its prompt must not wait
    before = snapshot(workspace)
    code = main([a.replace("{ws}", str(workspace)) for a in argv])
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("ttt") and " error: " in lines[0], err
    assert expected in lines[0], err
    assert snapshot(workspace) == before
