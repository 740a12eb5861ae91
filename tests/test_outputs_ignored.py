"""What the README's commands and the tools' defaults write is git-ignored, so `git status` stays clean."""

from __future__ import annotations

import importlib
import inspect
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lightning_ttt.cli import TOOLS

REPO = Path(__file__).resolve().parents[1]


def _written_paths() -> set[str]:
    readme = (REPO / "README.md").read_text()
    paths = {m for m in re.findall(r"--(?:out|tensorboard)[ =]([\w./-]+)", readme) if m not in ("DIR", "F")}
    for tool in TOOLS.values():  # defaults of `out` / `tensorboard` options
        function = getattr(importlib.import_module(tool.module), tool.function)
        for name, param in inspect.signature(function).parameters.items():
            if name in ("out", "tensorboard") and isinstance(param.default, str):
                paths.add(param.default)
    return paths | {"runs/debug-e2e/version_0", "lightning_logs/version_0"}


def test_outputs_of_readme_commands_and_tool_defaults_are_ignored() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    paths = sorted(_written_paths())
    assert {"model/", "niah/", "released/125m-books-8k", "eval/e2e", "models/smollm2-fa"} <= set(paths)
    probes = [str(Path(p) / "x.json") for p in paths]
    run = subprocess.run(["git", "check-ignore", "--no-index", *probes], cwd=REPO, capture_output=True, text=True)
    ignored = set(run.stdout.split())
    assert [p for p in probes if p not in ignored] == []
