"""ModelConfig validation errors and the paper presets."""

from __future__ import annotations

import dataclasses

import pytest
from docstring_parser import parse

from lightning_ttt.config import METHODS, PRESETS, ModelConfig, ModelSettings, resolved_settings, settings_dict

# reference/paper.md §1.3: MLP width FA, MLP width E2E, suffix_len (TTT blocks)
PAPER_TABLE = {
    "125m": (2048, 1664, 3),
    "350m": (2816, 2304, 6),
    "760m": (4096, 3328, 6),
    "1b": (5376, 4352, 6),
    "3b": (6912, 5632, 8),
}


def test_seq_len_must_be_multiple_of_mini_batch():
    cfg = ModelConfig(mini_batch=32, window=128)
    with pytest.raises(ValueError, match=r"seq_len=100 .*multiple of the mini-batch size b=32"):
        cfg.check_seq_len(100)
    with pytest.raises(ValueError, match=r"data\.seq_len=48"):
        cfg.check_seq_len(48, setting="data.seq_len")
    with pytest.raises(ValueError, match=r"seq_len=0"):
        cfg.check_seq_len(0)
    cfg.check_seq_len(96)
    cfg.check_seq_len(16)  # shorter than b: a single chunk of the whole sequence
    assert cfg.loss_chunk(16) == 16 and cfg.loss_chunk(96) == 32


def test_window_must_cover_mini_batch():
    with pytest.raises(ValueError, match=r"window k=16 must be >= mini_batch b=32"):
        ModelConfig(method="e2e", window=16, mini_batch=32)
    with pytest.raises(ValueError, match=r"window k=16"):
        ModelConfig(method="swa", suffix_len=0, window=16, mini_batch=32)
    ModelConfig(method="fa", suffix_len=0, window=16, mini_batch=32)  # no window in full attention
    ModelConfig(method="e2e", window=32, mini_batch=32)


@pytest.mark.parametrize("suffix_len", [4, 5, 0])
def test_suffix_len_range_for_e2e(suffix_len):
    with pytest.raises(ValueError, match=rf"suffix_len={suffix_len} must be in \[1, n_layers-1=3\]"):
        ModelConfig(method="e2e", n_layers=4, suffix_len=suffix_len)


def test_suffix_len_zero_without_prime():
    with pytest.raises(ValueError, match=r"suffix_len=1 must be 0 for method swa"):
        ModelConfig(method="swa", suffix_len=1)


def test_unknown_preset_method_and_override():
    with pytest.raises(ValueError, match=r"unknown preset '7b'"):
        ModelConfig.from_preset("7b")
    with pytest.raises(ValueError, match=r"unknown method 'mamba'"):
        ModelConfig.from_preset("debug", "mamba")
    with pytest.raises(ValueError, match=r"method='mamba' is unknown"):
        ModelConfig(method="mamba")
    with pytest.raises(ValueError, match=r"unknown model setting\(s\) d_modle, foo"):
        ModelConfig.from_preset("debug", "e2e", foo=1, d_modle=64)
    with pytest.raises(ValueError, match=r"attention_kernel='cudnn' is unknown"):
        ModelConfig(attention_kernel="cudnn")


def test_token_ids_must_fit_vocabulary():
    with pytest.raises(ValueError, match=r"bos_id=258 must be a token id below vocab_size=258"):
        ModelConfig(vocab_size=258, bos_id=258, eos_id=257)
    with pytest.raises(ValueError, match=r"eos_id=300 must be a token id below vocab_size=258"):
        ModelConfig(vocab_size=258, bos_id=1, eos_id=300)


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match=r"d_model=130 must be divisible by n_heads=4"):
        ModelConfig(d_model=130, n_heads=4)
    with pytest.raises(ValueError, match=r"head dim .*=5 must be even"):
        ModelConfig(d_model=20, n_heads=4)


def test_all_problems_reported_at_once():
    with pytest.raises(ValueError) as err:
        ModelConfig(d_model=130, window=8, mini_batch=32, inner_lr=0)
    message = str(err.value)
    assert "d_model=130" in message and "window k=8" in message and "inner_lr=0" in message


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_builds(preset, method):
    cfg = ModelConfig.from_preset(preset, method)
    assert cfg.method == method and cfg.name == f"{preset}-{method}"
    arch = PRESETS[preset]
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads) == (arch["n_layers"], arch["d_model"], arch["n_heads"])
    if method == "e2e":
        assert cfg.mlp_hidden == arch["mlp_hidden_e2e"] and cfg.suffix_len == arch["suffix_len"] >= 1
        assert cfg.has_prime and cfg.ttt_in_training
        assert cfg.prefix_len == cfg.n_layers - cfg.suffix_len
    else:
        assert cfg.mlp_hidden == arch["mlp_hidden"] and cfg.suffix_len == 0
        assert not cfg.has_prime and not cfg.ttt_in_training
    if preset in PAPER_TABLE:
        fa_width, e2e_width, suffix = PAPER_TABLE[preset]
        assert cfg.mlp_hidden == (e2e_width if method == "e2e" else fa_width)
        assert cfg.suffix_len == (suffix if method == "e2e" else 0)
        assert suffix == cfg.n_layers // 4  # "last 1/4 of the blocks"
        assert (cfg.vocab_size, cfg.bos_id, cfg.eos_id) == (128256, 128000, 128001)
        assert (cfg.window, cfg.mini_batch, cfg.rope_theta) == (8192, 1024, 500_000.0)


def test_preset_overrides_and_replace():
    cfg = ModelConfig.from_preset("debug", "e2e", window=64, meta_learning=False)
    assert cfg.window == 64 and not cfg.ttt_in_training and cfg.has_prime
    assert cfg.replace(inner_lr=0.5).inner_lr == 0.5
    with pytest.raises(ValueError, match=r"window k=16"):
        cfg.replace(window=16)
    assert ModelConfig(**{k: v for k, v in cfg.to_dict().items()}) == cfg


def test_every_field_has_a_one_line_help_and_a_setting() -> None:
    """The recipe's model.config is derived from ModelConfig: a new field needs only a line of help."""
    helps = {p.arg_name: p.description for p in parse(ModelConfig.__doc__).params}
    fields = [f.name for f in dataclasses.fields(ModelConfig)]
    assert [name for name in fields if not helps.get(name)] == [], "add the field to ModelConfig's Attributes"
    assert [f.name for f in dataclasses.fields(ModelSettings)] == [n for n in fields if n not in ("method", "name")]
    assert all(f.default is None for f in dataclasses.fields(ModelSettings))


def test_settings_resolve_to_the_preset_values() -> None:
    given = ModelSettings(window=256, bos_id=None)
    assert settings_dict(given) == {"window": 256} and settings_dict({"window": 256, "d_model": None}) == {"window": 256}
    resolved = resolved_settings("125m", "fa", given)
    cfg = ModelConfig.from_preset("125m", "fa", window=256)
    assert resolved["window"] == 256 and resolved["d_model"] == cfg.d_model == 768 and resolved["suffix_len"] == 0
    assert resolved["vocab_size"] is None and resolved["inner_lr"] == cfg.inner_lr
    with pytest.raises(ValueError, match="window k=16 must be >= mini_batch b=32"):
        resolved_settings("debug", "e2e", {"window": 16})
