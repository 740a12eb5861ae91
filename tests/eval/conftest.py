"""The tiny context-length sweep, run once through the real `ttt sweep` command and shared by the tests."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from sweeps import run_sweep, tiny_sweep_spec  # tests/eval/sweeps.py


@dataclass
class FinishedSweep:
    spec: Path
    out: Path
    first: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory) -> FinishedSweep:
    root = tmp_path_factory.mktemp("sweep")
    spec = root / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tiny_sweep_spec()))
    out = root / "out"
    first = run_sweep(spec, out)
    assert first.returncode == 0, first.stderr[-3000:]
    return FinishedSweep(spec, out, first)
