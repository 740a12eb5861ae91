"""benchmarks/gpu.py --tiny runs on the CPU with the data stack unimportable (a GPU machine has torch only)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# makes every import of the data and Hugging Face stack fail, then runs the script as `python benchmarks/gpu.py --tiny`
BLOCKED_RUN = """
import importlib.abc, runpy, sys
BLOCKED = {"datasets", "tokenizers", "transformers", "huggingface_hub", "safetensors", "jsonargparse", "docstring_parser"}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Blocker())
for name in [m for m in sys.modules if m.split(".")[0] in BLOCKED]:
    del sys.modules[name]
sys.argv = ["benchmarks/gpu.py", "--tiny"]
runpy.run_path("benchmarks/gpu.py", run_name="__main__")
"""


@pytest.mark.slow
def test_gpu_script_tiny_runs_without_the_data_stack():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", BLOCKED_RUN], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    positive = lambda x: isinstance(x, float) and math.isfinite(x) and x > 0  # noqa: E731
    train = report["train"]["128"]
    for method in ("fa", "swa", "e2e"):
        assert positive(train[method]["step_s"]) and positive(train[method]["tokens_per_s"])
        assert positive(train[method]["flops_per_token"])
        gap = report["loss_bf16_vs_fp32"][method]
        assert math.isfinite(gap["abs_diff"]) and gap["abs_diff"] < 0.1  # bf16 autocast only perturbs the loss
    assert positive(train["e2e_over_fa"]) and positive(train["e2e_over_swa"])
    for key in ("e2e.128", "fa.128"):
        assert positive(report["prefill"][key]["prefill_s_per_1k"]) and positive(report["decode"][key])
    assert report["flash_attn_used"] is False and report["device"] == "cpu"
