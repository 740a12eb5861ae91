"""The authors' model settings -> ModelConfig; our presets equal the released models' configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from authors_fixture import AUTHORS_CONFIG, COMMON, RELEASED
from lightning_ttt.config import ModelConfig
from lightning_ttt.convert.authors_config import model_config_from_authors, read_authors_config
from lightning_ttt.convert.jax_import import preset_from_root, resolve_architecture

INNER = {"optimizer_inner": {"optimizer_type": "sgd", "lr": 1.0, "clip_gradient": 1.0}}


@pytest.mark.parametrize("size", sorted(RELEASED))
def test_our_presets_are_the_released_configs(size):
    theirs = model_config_from_authors({**COMMON, **RELEASED[size]}, INNER)
    ours = ModelConfig.from_preset(size, "e2e")
    assert ours.architecture_differences(theirs) == []
    for name in ("window", "mini_batch", "rope_theta", "inner_lr", "inner_clip", "norm_eps"):
        assert getattr(ours, name) == getattr(theirs, name), name


def test_fixture_config():
    cfg = read_authors_config(AUTHORS_CONFIG)
    assert (cfg.method, cfg.vocab_size, cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.mlp_hidden, cfg.suffix_len,
            cfg.window, cfg.mini_batch, cfg.rope_theta, cfg.bos_id, cfg.eos_id, cfg.norm_eps) == \
        ("e2e", 256, 64, 4, 4, 96, 2, 32, 16, 10000.0, 1, 2, 1e-6)
    assert (cfg.inner_lr, cfg.inner_clip, cfg.ilr_init, cfg.ilr_warmup_steps) == (1.0, 1.0, 0.1, 480)
    assert cfg.name == "tiny-e2e"


def test_config_file_forms(tmp_path: Path):
    settings = json.loads(AUTHORS_CONFIG.read_text())
    expected = read_authors_config(AUTHORS_CONFIG)
    nested = tmp_path / "reference.json"  # a resolved config under `config:`, like a fixture's reference.json
    nested.write_text(json.dumps({"fixture": "x", "config": settings}))
    plain = tmp_path / "model.yaml"  # a hand-written YAML with only the model section
    plain.write_text(yaml.safe_dump({"model": settings["model"]}))
    assert read_authors_config(nested) == expected
    from_yaml = read_authors_config(plain)
    assert from_yaml.architecture_differences(expected) == [] and from_yaml.ilr_warmup_steps == 0


def _model(**changes):
    model = dict(json.loads(AUTHORS_CONFIG.read_text())["model"])
    model.update(changes)
    return {k: v for k, v in model.items() if v is not None}


@pytest.mark.parametrize("changes, message", [
    ({"qk_norm": False}, r"model\.qk_norm=False is not supported"),
    ({"tie_word_embeddings": False}, r"model\.tie_word_embeddings=False is not supported"),
    ({"feed_forward_prime": "mlp"}, r"model\.feed_forward_prime='mlp' is not supported"),
    ({"seq_modeling_block": "mamba"}, r"model\.seq_modeling_block='mamba' is not supported"),
    ({"rope_theta": None}, r"model\.rope_theta is missing"),
    ({"num_attention_heads": 5}, r"d_model=64 must be divisible by n_heads=5"),
])
def test_unrepresentable_settings_are_one_line_errors(tmp_path: Path, changes, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": _model(**changes)}))
    with pytest.raises(ValueError, match=message) as err:
        read_authors_config(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_other_methods_and_bad_files(tmp_path: Path):
    swa = model_config_from_authors(_model(prime=False))
    fa = model_config_from_authors(_model(seq_modeling_block="self_attention", sliding_window_size=None))
    assert (swa.method, swa.suffix_len, fa.method, fa.suffix_len) == ("swa", 0, "fa", 0)
    with pytest.raises(ValueError, match="optimizer_type='adam' is not supported"):
        model_config_from_authors(_model(), {"optimizer_inner": {"optimizer_type": "adam"}})
    (tmp_path / "none.yaml").write_text("training: {}\n")
    with pytest.raises(ValueError, match="has no `model:` section"):
        read_authors_config(tmp_path / "none.yaml")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="is not readable YAML/JSON"):
        read_authors_config(tmp_path / "broken.json")
    with pytest.raises(FileNotFoundError, match="nothere.yaml does not exist"):
        read_authors_config(tmp_path / "nothere.yaml")


@pytest.mark.parametrize("name, preset", [
    ("125m_ttt_e2e_pretrain_dclm_8k_1x_cc", "125m"), ("1b_ttt_e2e_finetune_books_8k_1x_cc", "1b"),
    ("3b_ttt_e2e_finetune_books_128k_1x_cc", "3b"), ("760m_ttt_e2e_pretrain_dclm_8k_1x_cc", "760m"),
])
def test_preset_from_released_root_names(tmp_path: Path, name, preset):
    (tmp_path / name / "4799").mkdir(parents=True)
    assert preset_from_root(tmp_path / name) == preset
    assert preset_from_root(tmp_path / name / "4799") == preset  # a step directory names its root
    assert resolve_architecture(tmp_path / name).name == f"{preset}-e2e"


def test_architecture_must_be_given_when_the_name_does_not_tell(tmp_path: Path):
    with pytest.raises(ValueError, match="pass --preset NAME or --config FILE"):
        resolve_architecture(tmp_path / "tiny_ttt_e2e_pretrain_dclm_8k_1x_cc")
    with pytest.raises(ValueError, match="--preset or --config, not both"):
        resolve_architecture(tmp_path, preset="125m", config=AUTHORS_CONFIG)
    with pytest.raises(ValueError, match="--preset 'debug' is unknown"):
        resolve_architecture(tmp_path, preset="debug")
