"""The CPU warm-start demonstration (recipes/warmstart/demo.py) end to end at its CI size: pretrain with
`ttt fit`, save as a Hugging Face model, `ttt convert-hf`, meta-train from the converted directory with
`ttt fit --model.init_from`, evaluate with `ttt eval-context --model-dir` and `ttt niah`, report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="the .[hf] extra (transformers) is not installed")

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_warm_start_demonstration_runs(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, str(REPO / "recipes/warmstart/demo.py"), "--tiny", "--out", str(out)],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (out / "hf-original" / "config.json").is_file() and (out / "hf-original" / "model.safetensors").is_file()
    for method in ("fa", "swa", "e2e"):
        meta = json.loads((out / "models" / method / "config.json").read_text())
        assert meta["model"]["method"] == method and meta["model"]["rope_layout"] == "half"
    report = (out / "report.md").read_text().split("| NIAH")[0]
    rows = [line for line in report.splitlines() if line.startswith("| ") and "model" not in line]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == [
        "original (fa)", "swa conversion", "e2e conversion, before meta-training", "swa, fine-tuned",
        "e2e, meta-trained"]
    assert (out / "nll_by_position.png").stat().st_size > 1000
    assert (out / "niah" / "e2e-metatrained" / "summary.json").is_file()
    assert "NIAH accuracy" in (out / "report.md").read_text()
    # the e2e conversion starts as the swa conversion: identical loss on the first mini-batch (before any TTT step)
    first = {name: json.loads((out / "eval" / name / "nll_by_position-000512.json").read_text())["nll"][:32]
             for name in ("swa", "e2e")}
    assert first["swa"] == pytest.approx(first["e2e"], abs=1e-5)
    # rerunning skips every finished step
    again = subprocess.run([sys.executable, str(REPO / "recipes/warmstart/demo.py"), "--tiny", "--out", str(out)],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "ttt fit" not in again.stdout and "ttt eval-context" not in again.stdout
