"""Shared test settings: CPU threads, the reference fixture location, GPU skips, the tiny finished sweep."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from fixture_paths import REFERENCE  # tests/fixture_paths.py
from sweeps import run_sweep, tiny_sweep_spec  # tests/sweeps.py


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))  # `ttt` in tests and their subprocesses


@pytest.fixture(scope="session")
def tiny_fixture() -> Path:
    """The reference fixture in the repository (tests/fixtures/reference_e2e)."""
    return REFERENCE


@pytest.fixture(autouse=True)
def keep_threads():
    """`ttt` commands run in-process set torch's thread count (lightning_ttt.threads); the next test gets it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: intra-op threads only add overhead (and stall badly on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "tiny_sweep" in getattr(item, "fixturenames", ()):  # runs `ttt sweep` in subprocesses
            item.add_marker(pytest.mark.slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)


@dataclass
class FinishedSweep:
    spec: Path
    out: Path
    first: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory) -> FinishedSweep:
    """The tiny context-length sweep, run once through the real `ttt sweep` command and shared by the tests."""
    root = tmp_path_factory.mktemp("sweep")
    spec = root / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tiny_sweep_spec()))
    out = root / "out"
    first = run_sweep(spec, out)
    assert first.returncode == 0, first.stderr[-3000:]
    return FinishedSweep(spec, out, first)
