"""Parity with the authors' JAX implementation (the shipped ``tiny`` fixture), and that the checker
itself catches errors and handles other fixtures in the same format."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import lightning_ttt.ttt.update as update
from lightning_ttt.model.transformer import Transformer
from lightning_ttt.tools.reference import Fixture, mode_from_settings, to_fixture_layout
from lightning_ttt.tools.verify import compute_mode, verify
from fixture_paths import FULL_REFERENCE, REFERENCE  # tests/fixture_paths.py
from tiny_models import randomize_weights  # tests/tiny_models.py


pytestmark = pytest.mark.usefixtures("single_thread")


FIXTURE = REFERENCE  # tests/fixtures/reference_e2e/tiny.npz: trimmed, always present
full_fixture = pytest.mark.skipif(not FULL_REFERENCE.is_file(), reason=f"the full fixture {FULL_REFERENCE} is not present")
MODES = ("meta", "pretrain_swa_prime", "pretrain_swa", "pretrain_fa")


def _check_report(report: dict, dtype: str) -> None:
    assert report["reference"] == ("f64" if dtype == "float64" else "f32")
    assert set(report["modes"]) == set(MODES)
    for name, mode in report["modes"].items():
        assert mode["passed"], (name, mode["failed"], mode["unchecked"])
        assert mode["failed"] == [] and mode["unchecked"] == []
        assert all(check["passed"] for check in mode["checks"].values())
    meta = report["modes"]["meta"]["checks"]
    assert {"loss", "per_seq_loss", "chunk_loss", "token_nll", "logits_pre_update", "prefix_output", "inner_grad_norm",
            "ilr_multiplier", "effective_inner_lr"} <= set(meta)
    assert "logits" in report["modes"]["pretrain_fa"]["checks"]
    assert report["passed"] is True
    json.dumps(report)  # the CLI prints it


# ---------------------------------------------------------------- the shipped fixture
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tiny_fixture_passes(dtype):
    report = verify(FIXTURE, dtype)
    _check_report(report, dtype)
    with np.load(FIXTURE) as npz:
        reference_loss = float(npz["meta.loss"])
        recorded = {k.removeprefix("f64.meta.") for k in npz.files if k.startswith("f64.meta.")}
    assert abs(report["modes"]["meta"]["loss"] - reference_loss) <= 1e-5
    if dtype == "float64":  # every recorded gradient and the fast weights after the last step were compared
        meta = report["modes"]["meta"]["checks"]
        assert set(meta) == recorded and len(meta) > 40
        assert {"grad.embed", "grad.final_norm", "grad.blocks.0.attn.wq", "grad.blocks.3.mlp.w2",
                "grad.blocks.3.prime.w1", "grad.blocks.3.prime_norm", "inner_params_final.blocks.3.prime.w3"} <= set(meta)


@full_fixture
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_full_fixture_passes(dtype):
    """Where the full fixture sits beside the repository: every one of its arrays, every gradient in both
    precisions and the fast weights after every inner step."""
    report = verify(FULL_REFERENCE, dtype)
    _check_report(report, dtype)
    meta = report["modes"]["meta"]["checks"]
    assert {"first_chunk_logits", "grad.blocks.1.attn.wq", "grad.blocks.2.mlp.w1",
            "inner_params_after_step.blocks.3.prime.w2", "inner_params_final.blocks.3.prime.w3"} <= set(meta)


def test_the_trimmed_fixture_holds_the_full_ones_numbers():
    """tests/fixtures/reference_e2e is a subset of the full fixture, array for array (when that is present)."""
    with np.load(FIXTURE) as trimmed:
        assert len(trimmed.files) > 200 and FIXTURE.stat().st_size <= 5_000_000
        if FULL_REFERENCE.is_file():
            with np.load(FULL_REFERENCE) as full:
                for key in trimmed.files:
                    assert np.array_equal(trimmed[key], full[key]), key


def _copy_fixture(tmp_path: Path, change) -> Path:
    with np.load(FIXTURE) as npz:
        arrays = {k: npz[k] for k in npz.files}
    change(arrays)
    path = tmp_path / "tiny.npz"
    np.savez(path, **arrays)
    shutil.copy(FIXTURE.with_suffix(".json"), tmp_path / "tiny.json")
    return path


def test_perturbed_parameter_is_caught(tmp_path):
    def change(arrays):
        arrays["params.blocks.0.attn.wq"] = arrays["params.blocks.0.attn.wq"] + np.float32(1e-3)
    path = _copy_fixture(tmp_path, change)
    for dtype in ("float32", "float64"):
        report = verify(path, dtype, modes=["meta", "pretrain_fa"])
        assert report["passed"] is False
        for name in ("meta", "pretrain_fa"):
            mode = report["modes"][name]
            assert not mode["passed"] and {"loss", "token_nll"} <= set(mode["failed"])
            assert dtype == "float32" or "grad.blocks.0.attn.wq" in mode["failed"]


def test_non_differentiable_clip_is_caught(monkeypatch):
    """Pitfall 1: a clip whose scale ignores the derivative of the norm. The forward is exact, so only
    the meta-mode gradients move — and the report must say so."""
    def detached_clip(norm, clip):
        return torch.where(norm < clip, torch.ones_like(norm), clip / norm.detach())
    monkeypatch.setattr(update, "clip_scale", detached_clip)
    report = verify(FIXTURE, "float64", modes=["meta"])
    meta = report["modes"]["meta"]
    assert report["passed"] is False and not meta["passed"]
    assert meta["failed"] and all(key.startswith("grad.") for key in meta["failed"])
    assert "grad.blocks.3.prime.w1" in meta["failed"]
    for key in ("loss", "chunk_loss", "token_nll", "inner_grad_norm", "inner_params_final.blocks.3.prime.w1"):
        assert meta["checks"][key]["passed"], key


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        verify(tmp_path / "nothere.npz")
    np.savez(tmp_path / "lonely.npz", input_ids=np.zeros((1, 4), np.int32))
    with pytest.raises(FileNotFoundError, match="lonely.json"):
        verify(tmp_path / "lonely.npz")


def test_bad_arguments():
    with pytest.raises(ValueError, match="float16"):
        verify(FIXTURE, "float16")
    with pytest.raises(ValueError, match="f16"):
        verify(FIXTURE, "float32", against="f16")
    with pytest.raises(ValueError, match="pretrain_mamba"):
        verify(FIXTURE, "float32", modes=["pretrain_mamba"])


# ---------------------------------------------------------------- the config mapping
def _settings(**model_changes):
    model = {
        "vocab_size": 256, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 4,
        "num_attention_heads": 4, "mini_batch_size": 16, "sliding_window_size": 32, "seq_len": 128,
        "rms_norm_eps": 1e-6, "initializer_range": 0.02, "bos_token_id": 5, "eos_token_id": 2,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": True,
        "seq_modeling_block": "SWA", "rope_theta": 10000.0, "suffix_len": 2, "prime": True, "qk_norm": True,
        "pre_norm": True, "post_norm": True, "feed_forward_prime": "swiglu",
    }
    model.update(model_changes)
    training = {"seq_length": 64, "train_mode": "meta (see modes for overrides)",
                "optimizer_inner": {"optimizer_type": "sgd", "lr": 1.0, "clip_gradient": 0.5},
                "ilr_warmup_steps": 10, "ilr_init": 0.1}
    return {"model": model, "training": training, "outer_step": 2}


def test_mode_from_settings_maps_every_setting():
    mode = mode_from_settings("meta", _settings())
    cfg = mode.config
    assert mode.meta and cfg.method == "e2e" and cfg.meta_learning
    assert (cfg.vocab_size, cfg.d_model, cfg.mlp_hidden, cfg.n_layers, cfg.n_heads) == (256, 64, 96, 4, 4)
    assert (cfg.mini_batch, cfg.window, cfg.suffix_len, cfg.prefix_len) == (16, 32, 2, 2)
    assert (cfg.bos_id, cfg.eos_id, cfg.rope_theta, cfg.norm_eps, cfg.init_std) == (5, 2, 10000.0, 1e-6, 0.02)
    assert cfg.inner_clip == 0.5 and cfg.inner_lr == 1.0
    assert (cfg.ilr_init, cfg.ilr_warmup_steps) == (0.1, 10)
    assert mode.inner_lr == pytest.approx(0.1 + 0.9 * 0.3) and mode.ilr_multiplier == pytest.approx(0.37)
    # the update rule uses the effective lr and the clip
    fast = {"w": torch.zeros(1, 3, dtype=torch.float64)}
    grads = {"w": torch.tensor([[3.0, 4.0, 0.0]], dtype=torch.float64)}  # norm 5 > clip 0.5
    new, norm = mode.update_fn()(fast, grads)
    torch.testing.assert_close(new["w"], -0.37 * 0.5 / 5 * grads["w"])
    assert norm.item() == pytest.approx(5.0)

    # lr != 1: the multiplier is the effective lr divided by lr
    settings = _settings()
    settings["training"]["optimizer_inner"]["lr"] = 0.5
    mode = mode_from_settings("meta", settings)
    assert mode.inner_lr == pytest.approx(0.1 + 0.4 * 0.3) and mode.ilr_multiplier == pytest.approx(0.44)
    # warm-up over: multiplier 1; no warm-up: multiplier 1
    settings["outer_step"] = 9
    assert mode_from_settings("meta", settings).inner_lr == pytest.approx(0.5)
    settings["training"]["ilr_warmup_steps"] = 0
    settings["outer_step"] = 0
    assert mode_from_settings("meta", settings).ilr_multiplier == 1.0


def test_mode_from_settings_other_modes_and_errors():
    pre = _settings()
    pre["training"]["train_mode"] = "pretrain"
    mode = mode_from_settings("pretrain_swa_prime", pre)
    assert not mode.meta and mode.config.method == "e2e" and not mode.config.meta_learning
    mode = mode_from_settings("pretrain_swa", {**pre, "model": {**pre["model"], "prime": False, "suffix_len": 0}})
    assert mode.config.method == "swa" and mode.config.suffix_len == 0 and not mode.meta
    fa = {**pre, "model": {**pre["model"], "prime": False, "seq_modeling_block": "self_attention",
                           "mini_batch_size": 64}}
    mode = mode_from_settings("pretrain_fa", fa)
    assert mode.config.method == "fa" and mode.config.suffix_len == 0 and mode.config.mini_batch == 64
    with pytest.raises(ValueError, match=r"model\.qk_norm"):
        mode_from_settings("x", _settings(qk_norm=False))
    with pytest.raises(ValueError, match=r"model\.seq_modeling_block='mamba'"):
        mode_from_settings("x", _settings(seq_modeling_block="mamba"))
    bad = _settings()
    bad["training"]["train_mode"] = "distill"
    with pytest.raises(ValueError, match=r"training\.train_mode='distill'"):
        mode_from_settings("x", bad)


# ---------------------------------------------------------------- another fixture in the same format
def _generated_settings():
    model = {
        "vocab_size": 41, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 3,
        "num_attention_heads": 2, "mini_batch_size": 4, "sliding_window_size": 6, "seq_len": 32,
        "rms_norm_eps": 1e-6, "initializer_range": 0.02, "bos_token_id": 1, "eos_token_id": 2,
        "tie_word_embeddings": True, "seq_modeling_block": "SWA", "rope_theta": 10000.0,
        "suffix_len": 2, "prime": True, "qk_norm": True, "pre_norm": True, "post_norm": True,
        "feed_forward_prime": "swiglu",
    }
    training = {"seq_length": 12, "train_mode": "meta",
                "optimizer_inner": {"optimizer_type": "sgd", "lr": 1.0, "clip_gradient": 0.5},
                "ilr_warmup_steps": 10, "ilr_init": 0.1}
    off = {"training.train_mode": "pretrain", "model.prime": False, "model.suffix_len": 0}
    modes = {"meta": {"overrides": {}},
             "pretrain_swa_prime": {"overrides": {"training.train_mode": "pretrain"}},
             "pretrain_swa": {"overrides": off},
             "pretrain_fa": {"overrides": {**off, "model.seq_modeling_block": "self_attention",
                                           "model.mini_batch_size": 12}}}
    return {"fixture": "generated", "outer_step": 2, "batch_size": 3, "model": model, "training": training,
            "modes": modes}


@pytest.fixture(scope="module")
def generated_fixture(tmp_path_factory):
    """A fixture in the shipped format for 2 suffix blocks, batch 3, clip 0.5 and ilr multiplier 0.37,
    with reference arrays from our own float64 model."""
    tmp = tmp_path_factory.mktemp("generated")
    spec = _generated_settings()
    (tmp / "gen.json").write_text(json.dumps(spec))
    meta_cfg = mode_from_settings("meta", spec).config
    torch.manual_seed(0)
    model = randomize_weights(Transformer(meta_cfg).double(), std=0.3)
    arrays: dict[str, np.ndarray] = {}
    for name, p in model.named_parameters():
        arrays[f"params.{name.removesuffix('.weight')}"] = to_fixture_layout(name.removesuffix(".weight"),
                                                                              p.detach().float())
    rng = np.random.RandomState(7)
    stream = rng.randint(3, 41, size=(3, 13))
    stream[:, 0] = 1
    stream[0, 5], stream[0, 6] = 2, 1  # document boundary: target 5 of sequence 0 masked
    stream[2, 9], stream[2, 10] = 2, 1  # target 9 of sequence 2 masked
    arrays.update(input_ids=stream[:, :-1].astype(np.int32), target_tokens=stream[:, 1:].astype(np.int32),
                  loss_masks=stream[:, 1:] != 1)
    path = tmp / "gen.npz"
    np.savez(path, **arrays)
    fixture = Fixture(path)
    for name, mode in fixture.modes().items():
        for key, value in compute_mode(fixture, mode, torch.float64).items():
            value = np.asarray(value)
            arrays[f"f64.{name}.{key}"] = value
            arrays[f"{name}.{key}"] = value.astype(np.float32) if value.dtype == np.float64 else value
    # the ilr bookkeeping is written from the settings by hand, not from our mapping
    for prefix in ("", "f64."):
        arrays[f"{prefix}meta.ilr_multiplier"] = np.asarray(0.1 + 0.9 * 3 / 10)
        arrays[f"{prefix}meta.effective_inner_lr"] = np.asarray(1.0 * (0.1 + 0.9 * 3 / 10))
    np.savez(path, **arrays)
    return path, arrays


def test_generated_fixture_passes(generated_fixture):
    path, arrays = generated_fixture
    # the configuration really exercises the generic paths
    norms = arrays["meta.inner_grad_norm"]
    assert norms.shape == (3, 3) and (norms > 0.5).any()  # clipped steps
    assert arrays["meta.inner_params_after_step.blocks.1.prime.w1"].shape == (3, 3, 16, 24)
    assert arrays["meta.inner_params_final.blocks.2.prime.w2"].shape == (3, 24, 16)
    assert not np.allclose(arrays["meta.chunk_loss"], arrays["pretrain_swa_prime.chunk_loss"])
    report = verify(path, "float32", against="f32")
    assert report["passed"], {n: (m["failed"], m["unchecked"]) for n, m in report["modes"].items()}
    for name in MODES:
        mode = report["modes"][name]
        assert mode["passed"] and mode["unchecked"] == [] and mode["failed"] == []
    meta = report["modes"]["meta"]["checks"]
    for block in (1, 2):
        for w in ("w1", "w2", "w3"):
            assert meta[f"inner_params_after_step.blocks.{block}.prime.{w}"]["passed"]
            assert meta[f"grad.blocks.{block}.prime.{w}"]["passed"]
    assert meta["ilr_multiplier"]["passed"] and meta["effective_inner_lr"]["passed"]
    assert verify(path, "float64", modes=["meta"])["passed"]


def test_generated_fixture_detects_wrong_arrays(generated_fixture, tmp_path):
    _, arrays = generated_fixture
    arrays = copy.deepcopy(arrays)
    key = "meta.inner_params_after_step.blocks.2.prime.w2"
    arrays[key] = arrays[key].copy()
    arrays[key][2, 1, 0, 0] += 1e-3 * np.abs(arrays[key]).max()
    arrays["meta.ilr_multiplier"] = np.asarray(1.0)
    del arrays["meta.per_seq_loss"]
    arrays["meta.extra_quantity"] = np.zeros(3, np.float32)  # recorded but never computed by us
    np.savez(tmp_path / "gen.npz", **arrays)
    (tmp_path / "gen.json").write_text(json.dumps(_generated_settings()))
    report = verify(tmp_path / "gen.npz", "float32", modes=["meta"])
    meta = report["modes"]["meta"]
    assert not report["passed"] and not meta["passed"]
    assert meta["failed"] == sorted([key.removeprefix("meta."), "ilr_multiplier"])
    assert meta["unchecked"] == ["extra_quantity"]
    assert "per_seq_loss" not in meta["checks"]
