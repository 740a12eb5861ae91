"""`make bench` (benchmarks.run): the summary holds every key issue 14 asks for, each a positive finite number."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run import FULL, QUICK, lookup, required_keys
from benchmarks.table import table

REPO = Path(__file__).resolve().parents[2]

ISSUE_KEYS = (
    [f"train.e2e_over_{b}.{t}" for b in ("fa", "swa") for t in (1024, 4096, 16384)]
    + [f"train.peak_mb.{m}.{t}" for m in ("fa", "swa", "e2e") for t in (1024, 4096, 16384)]
    + [f"infer.prefill_s_per_1k.{m}.{t}" for m in ("fa", "swa", "e2e") for t in (1024, 4096, 16384, 65536)]
    + [f"infer.decode_ms.{m}.{t}" for m in ("fa", "swa", "e2e") for t in (4096, 16384, 65536)]
    + ["infer.peak_mb.e2e.16384", "infer.peak_mb.e2e.1048576"]
)


def test_full_run_measures_the_issues_keys():
    assert sorted(required_keys(FULL)) == sorted(ISSUE_KEYS)


def test_lookup_follows_dotted_keys():
    summary = {"train": {"peak_mb": {"fa": {"1024": 3.0}}}}
    assert lookup(summary, "train.peak_mb.fa.1024") == 3.0
    assert lookup(summary, "train.peak_mb.fa.4096") is None
    assert lookup(summary, "train.peak_mb.fa.1024.x") is None


@pytest.mark.slow
def test_quick_run_writes_every_key(tmp_path):
    out = tmp_path / "summary.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(out.read_text())
    values = {key: lookup(summary, key) for key in required_keys(QUICK)}
    bad = {k: v for k, v in values.items() if not (isinstance(v, float) and math.isfinite(v) and v > 0)}
    assert bad == {}
    assert summary["meta"]["quick"] is True and summary["meta"]["missing"] == []
    # beyond the issue's keys: the FLOP ratios (what equal speed per FLOP would give) and fa's unchunked forward
    t = str(QUICK.train_lengths[0])
    assert summary["train"]["flops_e2e_over_fa"][t] > 1 and summary["train"]["flops_e2e_over_swa"][t] > 1
    assert set(summary["infer"]["fa_whole_forward_s_per_1k"]) == {str(c) for c in QUICK.prefill_lengths}
    assert not list(tmp_path.glob("*.tmp"))  # written atomically
    rendered = table(summary)
    assert "| e2e / fa |" in rendered and "| e2e prefill s/1K |" in rendered and "| e2e / fa in FLOPs |" in rendered
