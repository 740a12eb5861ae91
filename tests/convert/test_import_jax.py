"""`ttt import-jax` and `ttt verify-import`: the authors' checkpoint reproduces their outputs, and
checkpoints of other configurations written the same way import exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from authors_fixture import AUTHORS_CONFIG, REFERENCE, RELEASED_ROOT, TRAINER_ROOT
from lightning_ttt.cli import main
from lightning_ttt.config import LLAMA3_TOKENIZER, ModelConfig
from lightning_ttt.convert.jax_import import default_tokenizer, import_jax
from lightning_ttt.convert.jax_names import PREFIX, to_authors
from lightning_ttt.infer.loading import load_model_dir
from lightning_ttt.ttt.update import make_update
from lightning_ttt.model.transformer import Transformer
from lightning_ttt.tools.verify_import import verify_import
from lightning_ttt.ttt.objective import lm_loss
from tiny_models import randomize_weights  # tests/tiny_models.py

pytest.importorskip("tensorstore")
from orbax_writer import write_checkpoint  # noqa: E402  (tests/convert/orbax_writer.py; needs tensorstore)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------- the authors' checkpoint
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_imported_model_reproduces_the_authors_outputs(imported, dtype):
    report = verify_import(imported, REFERENCE, dtype)
    assert report["passed"] is True, json.dumps(report, indent=1)
    for mode in ("ttt", "nottt"):
        checks = report["modes"][mode]["checks"]
        assert set(checks) == {"token_nll", "logits", "chunk_loss", "seq_loss", "eval_token_nll", "eval_chunk_loss",
                               "loss"}
        assert checks["loss"]["max_abs_err"] <= 1e-5 and checks["token_nll"]["max_abs_err"] <= 1e-4
    with np.load(REFERENCE) as ref:
        assert report["modes"]["ttt"]["loss"] == pytest.approx(float(ref["ttt.loss"]), abs=1e-5)
        assert report["modes"]["nottt"]["loss"] == pytest.approx(float(ref["nottt.loss"]), abs=1e-5)
    assert report["modes"]["ttt"]["loss"] != pytest.approx(report["modes"]["nottt"]["loss"], abs=1e-4)


def test_both_roots_import_to_the_same_model_via_the_command(imported, tmp_path, capsys):
    code, out, err = _cli(capsys, "import-jax", str(TRAINER_ROOT), "--config", str(AUTHORS_CONFIG),
                          "--out", str(tmp_path / "full"), "--step", "4799")  # opt_state/train_ds_iter ignored
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["config.json", "model.safetensors"]
    a, b = load_file(str(imported / "model.safetensors")), load_file(str(tmp_path / "full" / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((tmp_path / "full" / "config.json").read_text())
    assert meta["tokenizer"] is None  # a 256-id vocabulary: no tokenizer is known
    assert ModelConfig(**meta["model"]) == ModelConfig.from_exported(imported)
    code, out, err = _cli(capsys, "verify-import", str(tmp_path / "full"), str(REFERENCE), "--dtype", "float64")
    assert code == 0, err
    assert json.loads(out)["passed"] is True and json.loads(out)["dtype"] == "float64"


def test_verify_import_fails_on_a_wrong_model_and_rejects_bad_input(imported, tmp_path, capsys):
    state = load_file(str(imported / "model.safetensors"))
    state["blocks.2.prime_norm.weight"], state["blocks.2.prime_post_norm.weight"] = \
        state["blocks.2.prime_post_norm.weight"], state["blocks.2.prime_norm.weight"]  # a mapping mistake
    model = load_model_dir(imported).model
    model.load_state_dict(state)
    from lightning_ttt.infer.export import export_model

    export_model(model, tmp_path / "swapped", tokenizer=None)
    code, out, _ = _cli(capsys, "verify-import", str(tmp_path / "swapped"), str(REFERENCE))
    report = json.loads(out)
    assert code == 1 and report["passed"] is False and "logits" in report["modes"]["nottt"]["failed"]
    with np.load(REFERENCE) as ref:
        arrays = {k: ref[k] for k in ref.files}
    np.savez(tmp_path / "nobatch.npz", **{k: v for k, v in arrays.items() if k != "loss_masks"})
    np.savez(tmp_path / "wide.npz", **{**arrays, "input_ids": arrays["input_ids"] + 300})
    np.savez(tmp_path / "odd.npz", **{**arrays, **{k: arrays[k][:, :50] for k in ("input_ids", "target_tokens",
                                                                                   "loss_masks")}})
    for argv, message in (([str(tmp_path / "nobatch.npz")], "lacks the array 'loss_masks'"),
                          ([str(tmp_path / "wide.npz")], "does not fit vocab_size=256"),
                          ([str(tmp_path / "odd.npz")], "must be a multiple of the mini-batch size"),
                          ([str(tmp_path / "none.npz")], "none.npz does not exist")):
        code, _, err = _cli(capsys, "verify-import", str(imported), *argv)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    code, _, err = _cli(capsys, "verify-import", str(imported), str(REFERENCE), "--dtype", "float16")
    assert code == 2 and "--dtype" in err and "float16" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = _cli(capsys, "verify-import", str(tmp_path), str(REFERENCE))
    assert code == 2 and "is not an exported model directory" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- error cases of the importer
def _edit_and_import(tmp_path: Path, edit) -> str:
    """Copy the weights-only root, let ``edit`` change its model_weights item, import; return the error."""
    root = tmp_path / "root"
    shutil.copytree(RELEASED_ROOT, root)
    edit(root / "4799" / "model_weights")
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        import_jax(root, tmp_path / "out", config=AUTHORS_CONFIG, progress=False)
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    return str(err.value)


def _edit_tree(item: Path, change) -> None:
    meta = json.loads((item / "_METADATA").read_text())
    change(meta["tree_metadata"])
    (item / "_METADATA").write_text(json.dumps(meta))


WQ = "('language_model', 'model', 'h', 'blocks', 'seq_modeling_block', 'wq', 'weight')"


def test_missing_array(tmp_path):
    message = _edit_and_import(tmp_path, lambda item: _edit_tree(item, lambda tree: tree.pop(WQ)))
    assert "lacks the array language_model.model.h.blocks.seq_modeling_block.wq.weight" in message


def test_unexpected_array_in_a_complete_checkpoint(tmp_path):
    cfg = ModelConfig(vocab_size=40, d_model=16, n_layers=3, n_heads=2, mlp_hidden=24, suffix_len=1, window=8,
                      mini_batch=4, bos_id=1, eos_id=2)
    arrays = to_authors({k: v.numpy() for k, v in Transformer(cfg).state_dict().items()}, cfg)
    arrays[PREFIX + "h.blocks.attention_sink.weight"] = np.zeros((3, 16), np.float32)
    write_checkpoint(tmp_path / "root", 5, arrays)
    config = _authors_yaml(tmp_path / "arch.yaml", cfg)
    with pytest.raises(ValueError, match=r"holds the array language_model\.model\.h\.blocks\.attention_sink\.weight "
                                         r"that the architecture .* does not have"):
        import_jax(tmp_path / "root", tmp_path / "out", config=config, progress=False)


def test_wrong_shape(tmp_path):
    bigger = tmp_path / "bigger.json"
    settings = json.loads(AUTHORS_CONFIG.read_text())
    settings["model"]["intermediate_size"] = 128
    bigger.write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=r"array language_model\.model\.h\.blocks\.feed_forward\.w1\.weight has "
                                         r"shape \[4, 64, 96\], the architecture .* needs \[4, 64, 128\]"):
        import_jax(RELEASED_ROOT, tmp_path / "out", config=bigger, progress=False)
    assert not (tmp_path / "out").exists()


def test_command_errors_are_one_line_and_leave_nothing(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {**json.loads(AUTHORS_CONFIG.read_text())["model"], "post_norm": False}}))
    (tmp_path / "empty").mkdir()
    cases = [
        (["--config", str(AUTHORS_CONFIG), "--out", str(tmp_path / "taken")], "already exists"),
        (["--config", str(bad), "--out", str(tmp_path / "o1")], "model.post_norm=False is not supported"),
        (["--out", str(tmp_path / "o2")], "pass --preset NAME or --config FILE"),
        (["--preset", "125m", "--out", str(tmp_path / "o3")], "the architecture (125m-e2e: 12 layers"),
        (["--config", str(AUTHORS_CONFIG), "--step", "12", "--out", str(tmp_path / "o4")], "has no step 12"),
        (["--config", str(AUTHORS_CONFIG), "--tokenizer", "bytes", "--out", str(tmp_path / "o5")],
         "tokenizer 'bytes' (258 ids, BOS 256, EOS 257) does not fit the model (vocab_size 256, BOS 1, EOS 2)"),
    ]
    for args, message in cases:
        code, _, err = _cli(capsys, "import-jax", str(RELEASED_ROOT), *args, "--no-progress")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    code, _, err = _cli(capsys, "import-jax", str(tmp_path / "empty"), "--config", str(AUTHORS_CONFIG), "--out",
                        str(tmp_path / "o6"))
    assert code == 2 and "holds no step directory" in err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "empty", "taken"]


def test_default_tokenizer_is_llama3_for_its_vocabulary():
    assert default_tokenizer(ModelConfig.from_preset("125m", "e2e")) == LLAMA3_TOKENIZER
    assert default_tokenizer(ModelConfig.from_preset("3b", "e2e")) == LLAMA3_TOKENIZER
    assert default_tokenizer(ModelConfig()) is None  # the debug vocabulary: no known tokenizer


def test_tokenizer_is_recorded(tmp_path, word_tokenizer, capsys):
    code, _, err = _cli(capsys, "import-jax", str(RELEASED_ROOT), "--config", str(AUTHORS_CONFIG), "--tokenizer",
                        str(word_tokenizer), "--out", str(tmp_path / "m"), "--no-progress")
    assert code == 0, err
    assert load_model_dir(tmp_path / "m").tokenizer == str(word_tokenizer)


# ---------------------------------------------------------------- other configurations written the same way
def _authors_yaml(path: Path, cfg: ModelConfig) -> Path:
    model = {"vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.mlp_hidden,
             "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads, "mini_batch_size": cfg.mini_batch,
             "sliding_window_size": cfg.window, "rope_theta": cfg.rope_theta, "bos_token_id": cfg.bos_id,
             "eos_token_id": cfg.eos_id, "suffix_len": cfg.suffix_len, "prime": cfg.method == "e2e",
             "seq_modeling_block": "self_attention" if cfg.method == "fa" else "SWA", "rms_norm_eps": cfg.norm_eps,
             "tie_word_embeddings": True, "qk_norm": True, "pre_norm": True, "post_norm": True, "seq_len": 4096,
             "remat_block": "", "compute_dtype": "bf16", "param_dtype": "fp32"}
    path.write_text(yaml.safe_dump({"model": model}))
    return path


OTHER = {
    # 5 blocks, 3 of them TTT blocks; other vocabulary, window, mini-batch, width, heads and BOS/EOS
    "e2e-5x3": ModelConfig(method="e2e", vocab_size=300, d_model=48, n_layers=5, n_heads=3, mlp_hidden=80,
                           suffix_len=3, window=24, mini_batch=8, rope_theta=50_000.0, bos_id=0, eos_id=299),
    "e2e-3x1": ModelConfig(method="e2e", vocab_size=97, d_model=32, n_layers=3, n_heads=4, mlp_hidden=40,
                           suffix_len=1, window=16, mini_batch=16, rope_theta=500_000.0, bos_id=95, eos_id=96),
    "swa": ModelConfig(method="swa", vocab_size=120, d_model=32, n_layers=2, n_heads=2, mlp_hidden=64, suffix_len=0,
                       window=12, mini_batch=4, bos_id=1, eos_id=2),
}


@pytest.mark.parametrize("name", sorted(OTHER))
def test_other_configurations_import_exactly(tmp_path, name):
    cfg = OTHER[name]
    torch.manual_seed(0)
    original = randomize_weights(Transformer(cfg), std=0.3).eval()
    state = {k: v.detach().numpy() for k, v in original.state_dict().items()}
    write_checkpoint(tmp_path / f"{name}_ttt_e2e_run", 10, {k: v + 1 for k, v in to_authors(state, cfg).items()})
    write_checkpoint(tmp_path / f"{name}_ttt_e2e_run", 2999, to_authors(state, cfg),
                     zarr3=name == "e2e-3x1", chunk_rows=2 if name == "e2e-5x3" else None)  # the latest step
    out = import_jax(tmp_path / f"{name}_ttt_e2e_run", tmp_path / "out", config=_authors_yaml(tmp_path / "a.yaml", cfg),
                     progress=False)
    loaded = load_model_dir(out)
    assert loaded.model.cfg.architecture_differences(cfg) == [] and loaded.model.cfg.window == cfg.window
    for key, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, original.state_dict()[key]), key
    ids = torch.randint(0, cfg.vocab_size, (2, 4 * cfg.mini_batch), generator=torch.Generator().manual_seed(1))
    targets, mask = ids.roll(-1, 1), torch.ones_like(ids, dtype=torch.bool)
    ttt = cfg.method == "e2e"
    with torch.no_grad():
        ours = lm_loss(loaded.model, ids, targets, mask, ttt=ttt, update=loaded.update, keep_logits=True)
        ref = lm_loss(original, ids, targets, mask, ttt=ttt, update=make_update(original.cfg), keep_logits=True)
    assert torch.equal(ours.logits, ref.logits) and torch.equal(ours.chunk_loss, ref.chunk_loss)


def test_bfloat16_arrays_import_as_float32_and_integers_are_refused(tmp_path):
    cfg = OTHER["swa"]
    original = randomize_weights(Transformer(cfg), std=0.3)
    state = {k: v.detach().numpy() for k, v in original.state_dict().items()}
    write_checkpoint(tmp_path / "bf16", 1, to_authors(state, cfg), dtype="bfloat16")
    config = _authors_yaml(tmp_path / "a.yaml", cfg)
    out = import_jax(tmp_path / "bf16", tmp_path / "out", config=config, progress=False)
    for key, tensor in load_file(str(out / "model.safetensors")).items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, original.state_dict()[key].to(torch.bfloat16).float()), key
    write_checkpoint(tmp_path / "ints", 1, to_authors(state, cfg), dtype="int32")
    with pytest.raises(ValueError, match=r"array language_model\.model\.\S+ has dtype int32; expected floating point"):
        import_jax(tmp_path / "ints", tmp_path / "out2", config=config, progress=False)
