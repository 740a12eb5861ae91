"""benchmarks.train_memory: one fresh process per measurement; `--set` overrides preset fields."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import train_memory


def test_set_overrides_the_preset_and_is_recorded(tmp_path, capsys):
    out = tmp_path / "rows.json"
    train_memory.main(["--lengths", "64", "--methods", "swa", "--window", "32", "--mini-batch", "16",
                       "--set", "d_model=64", "--set", "n_layers=2", "--set", "attention_kernel=explicit",
                       "--json", str(out)])
    (row,) = json.loads(out.read_text())
    assert row["overrides"] == {"d_model": 64, "n_layers": 2, "attention_kernel": "explicit"}
    assert row["label"] == "swa" and math.isfinite(row["loss"])
    assert "d_model 64, n_layers 2" in capsys.readouterr().out


def test_set_needs_field_and_value():
    with pytest.raises(SystemExit) as exit_info:
        train_memory.main(["--set", "d_model"])
    assert exit_info.value.code == 2


def test_overrides_reach_the_model_config():
    with pytest.raises(ValueError, match="n_heads"):  # 128 is not divisible by 3: the override was applied
        train_memory._one_step_peak_mb("swa", 64, "debug", 32, 16, 1, False, False, "cpu", 1, overrides={"n_heads": 3})
