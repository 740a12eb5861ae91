"""`ttt convert-hf`: tiny random Llama, Qwen2, Qwen3 and Mistral models converted and compared with
Hugging Face's own forward pass (fp32), sliding-window and TTT-E2E conversions, errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lightning_ttt.cli import main
from lightning_ttt.convert.hf import convert_hf, model_config, to_hf
from lightning_ttt.infer import Generator, SamplingConfig
from lightning_ttt.infer.loading import load_model_dir
from lightning_ttt.model.transformer import Transformer
from lightning_ttt.ttt.inner_loop import run_inner_loop
from lightning_ttt.ttt.objective import lm_loss
from hf_models import VOCAB, edit_config, hf_model, save_hf, transformers  # tests/convert/hf_models.py

pytestmark = pytest.mark.usefixtures("single_thread")

SEQ, WINDOW, B = 24, 8, 4  # 6 TTT mini-batches of 4 tokens, window of 8


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """kind -> (saved directory, the Hugging Face model)."""
    root = tmp_path_factory.mktemp("hf")
    return {kind: (root / kind, save_hf(kind, root / kind)) for kind in ("llama", "qwen2", "qwen3", "mistral")}


def ids_of(batch=2, seq=SEQ, seed=1):
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def logits_of(model: Transformer, ids):
    with torch.no_grad():
        return model.logits(model(ids))


def assert_relative_close(ours, ref, tol=1e-5):
    err = ((ours - ref).abs().max() / ref.abs().max()).item()
    assert err <= tol, f"relative error {err:.2e} > {tol:.0e}"


def convert(src, out, method, **kwargs):
    settings = dict(window=WINDOW if method != "fa" else None, mini_batch=B, tokenizer="bytes")
    if method == "e2e":
        settings["suffix_len"] = 1
    return load_model_dir(convert_hf(str(src), out, method, **{**settings, **kwargs}))


def windowed_reference(hf, ids, window):
    """Hugging Face's forward with a custom 4D mask: position q attends to keys k with 0 <= q - k < window."""
    pos = torch.arange(ids.shape[1])
    delta = pos[:, None] - pos[None, :]
    allowed = (delta >= 0) & (delta < window)
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)  # [T, T] additive
    with torch.no_grad():
        return hf(ids, attention_mask=mask.expand(ids.shape[0], 1, -1, -1)).logits


# ---------------------------------------------------------------- parity with Hugging Face
@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_fa_logits_equal_hugging_face(sources, tmp_path, kind):
    src, hf = sources[kind]
    loaded = convert(src, tmp_path / "fa", "fa")
    cfg = loaded.model.cfg
    assert (cfg.method, cfg.rope_layout, cfg.post_norm, cfg.kv_heads) == ("fa", "half", False, 2)
    assert cfg.tie_embeddings == (kind == "llama") and cfg.qkv_bias == (kind == "qwen2") and cfg.qk_norm == (kind == "qwen3")
    assert cfg.rope_scaling == ("llama3" if kind == "llama" else "none") and cfg.head_dim == (24 if kind == "qwen3" else 16)
    ids = ids_of()
    with torch.no_grad():
        ref = hf(ids).logits
    assert_relative_close(logits_of(loaded.model, ids), ref)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_swa_conversion_equals_windowed_hugging_face(sources, tmp_path, kind):
    src, hf = sources[kind]
    model = convert(src, tmp_path / "swa", "swa").model
    ids = ids_of()
    ref = windowed_reference(hf, ids, WINDOW)
    ours = logits_of(model, ids)
    assert_relative_close(ours, ref)
    with torch.no_grad():  # the window matters: beyond it, full attention differs
        assert (hf(ids).logits[:, WINDOW:] - ours[:, WINDOW:]).abs().max() > 1e-3


def test_mistral_sliding_window_is_the_swa_conversion(sources, tmp_path):
    src, hf = sources["mistral"]
    model = load_model_dir(convert_hf(str(src), tmp_path / "swa", "swa", mini_batch=B, tokenizer="bytes")).model
    assert model.cfg.window == 8  # the source's sliding_window
    ids = ids_of()
    with torch.no_grad():
        ref = hf(ids).logits  # Hugging Face's own sliding-window mask
    assert_relative_close(logits_of(model, ids), ref)
    assert_relative_close(logits_of(model, ids), windowed_reference(hf, ids, 8))


def test_sharded_checkpoint_converts_the_same(sources, tmp_path):
    src, hf = sources["qwen3"]
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("*.safetensors"))) > 1
    a = convert(src, tmp_path / "one", "fa").model.state_dict()
    b = convert(sharded, tmp_path / "many", "fa").model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_reverse_mapping_gives_the_same_llama(tmp_path):
    """to_hf (used by the warm-start demonstration) writes our Llama-architecture model as LlamaForCausalLM."""
    src, hf = tmp_path / "src", hf_model("llama", seed=3)
    hf.save_pretrained(src)
    ours = convert(src, tmp_path / "fa", "fa").model
    config, state = to_hf(ours)
    back = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).eval()
    back.load_state_dict(state, strict=False)  # a tied head has no lm_head tensor of its own
    ids = ids_of()
    with torch.no_grad():
        assert_relative_close(back(ids).logits, hf(ids).logits)
    with pytest.raises(ValueError, match="prime MLPs"):
        to_hf(convert(src, tmp_path / "e2e", "e2e").model)


def test_config_mapping_of_transformers_4_configs():
    """config.json as transformers 4.x writes it (rope_theta + rope_scaling): Llama-3.2-1B's settings."""
    llama = {"model_type": "llama", "hidden_size": 2048, "num_attention_heads": 32, "num_key_value_heads": 8,
             "num_hidden_layers": 16, "intermediate_size": 8192, "vocab_size": 128256, "rms_norm_eps": 1e-5,
             "rope_theta": 500000.0, "tie_word_embeddings": True, "bos_token_id": 128000,
             "eos_token_id": [128001, 128008, 128009], "head_dim": 64,
             "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                              "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
    cfg = model_config(llama, "e2e", window=8192, mini_batch=1024, name="Llama-3.2-1B")
    assert (cfg.name, cfg.suffix_len, cfg.kv_heads, cfg.head_dim, cfg.head_dim_override) == ("Llama-3.2-1B-e2e", 4, 8, 64, None)
    assert (cfg.rope_theta, cfg.rope_scaling, cfg.rope_factor, cfg.rope_original_max_positions) == (5e5, "llama3", 32.0, 8192)
    assert (cfg.bos_id, cfg.eos_id, cfg.tie_embeddings, cfg.norm_eps) == (128000, 128001, True, 1e-5)
    qwen = {"model_type": "qwen2", "hidden_size": 896, "num_attention_heads": 14, "num_key_value_heads": 2,
            "num_hidden_layers": 24, "intermediate_size": 4864, "vocab_size": 151936, "rope_theta": 1e6,
            "rope_scaling": None, "bos_token_id": None, "eos_token_id": 151643, "use_sliding_window": False,
            "sliding_window": 32768, "max_window_layers": 21}
    cfg = model_config(qwen, "swa", window=4096, tied=False)
    assert (cfg.qkv_bias, cfg.bos_id, cfg.eos_id, cfg.window, cfg.tie_embeddings, cfg.rope_scaling) == \
        (True, 151643, 151643, 4096, False, "none")
    with pytest.raises(ValueError, match="rope_type='linear' is not supported"):
        model_config({**llama, "rope_scaling": {"type": "linear", "factor": 2.0}})
    with pytest.raises(ValueError, match="neither bos_token_id nor eos_token_id"):
        model_config({**qwen, "eos_token_id": None})


# ---------------------------------------------------------------- TTT-E2E conversion
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_e2e_starts_as_the_swa_conversion_and_the_first_step_learns(sources, tmp_path, kind):
    src, _ = sources[kind]
    swa = convert(src, tmp_path / "swa", "swa").model
    loaded = convert(src, tmp_path / "e2e", "e2e", suffix_len=2)
    e2e = loaded.model
    assert e2e.cfg.suffix_len == 2 and e2e.cfg.prime_width == 96
    ids = ids_of()
    swa_logits = logits_of(swa, ids)
    torch.testing.assert_close(logits_of(e2e, ids), swa_logits, atol=0, rtol=0)  # before any TTT step
    targets = torch.roll(ids, -1, dims=1)
    out = lm_loss(e2e, ids, targets, torch.ones_like(ids), ttt=True, update=loaded.update, keep_logits=True,
                  keep_history=True)
    # the first mini-batch: the same model, computed chunk by chunk (float32 rounding only)
    torch.testing.assert_close(out.logits[:, :B], swa_logits[:, :B], atol=1e-5, rtol=1e-5)
    assert (out.logits[:, B:] - swa_logits[:, B:]).abs().max() > 1e-4  # later ones use the updated prime MLPs
    initial, after_one, after_two = e2e.fast_weights(), out.inner.history[0], out.inner.history[1]
    for block in (1, 2):
        name = f"blocks.{block}.prime."
        assert (after_one[name + "w2"] - initial[name + "w2"]).abs().max() > 0  # zero-initialised w2 moves at once
        # w1/w3 get their gradient through w2, which is zero at the first step and non-zero at the second
        assert torch.equal(after_one[name + "w1"], initial[name + "w1"].expand_as(after_one[name + "w1"]))
        assert (after_two[name + "w1"] - initial[name + "w1"]).abs().max() > 0
        assert torch.equal(initial[name + "w1"], e2e.blocks[block].mlp.w1.weight)  # copied gate projection
        assert torch.equal(e2e.blocks[block].prime_norm.weight, e2e.blocks[block].ffn_norm.weight)


def test_prime_width_setting(sources, tmp_path):
    src, _ = sources["llama"]
    wide = convert(src, tmp_path / "wide", "e2e", prime_hidden=128).model
    narrow = convert(src, tmp_path / "narrow", "e2e", prime_hidden=32).model
    block_w, block_n = wide.blocks[-1], narrow.blocks[-1]
    assert block_w.prime.w1.weight.shape == (128, 64) and block_w.prime.w2.weight.shape == (64, 128)
    assert torch.equal(block_w.prime.w1.weight[:96], block_w.mlp.w1.weight)
    assert block_w.prime.w1.weight[96:].abs().max() > 0  # random rows beyond the MLP's width
    assert torch.equal(block_n.prime.w3.weight, block_n.mlp.w3.weight[:32])
    ids = ids_of()
    torch.testing.assert_close(logits_of(wide, ids), logits_of(narrow, ids), atol=0, rtol=0)


def test_one_meta_training_step_from_the_converted_directory(sources, tmp_path):
    src, _ = sources["qwen3"]
    loaded = convert(src, tmp_path / "e2e", "e2e")
    model = loaded.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = ids_of(seq=SEQ + 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = lm_loss(model, ids[:, :-1], ids[:, 1:], torch.ones_like(ids[:, 1:]), ttt=True, update=loaded.update,
                  create_graph=True)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    grad = model.blocks[-1].prime.w1.weight.grad  # reaches w1 only through the inner steps (second order)
    assert grad is not None and grad.abs().max() > 0
    optimizer.step()
    assert not torch.equal(before["blocks.2.prime.w2.weight"], model.blocks[2].prime.w2.weight)


# ---------------------------------------------------------------- the command, tokenizer, generation
def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_command_copies_the_tokenizer_and_generates(sources, tmp_path, capsys):
    src, _ = sources["llama"]
    out = tmp_path / "model"
    code, stdout, err = _run(["convert-hf", str(src), "--out", str(out), "--method", "e2e", "--window", "8",
                              "--mini-batch", "4", "--suffix-len", "1", "--prime-hidden", "48"], capsys)
    assert code == 0, err
    assert "converted" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    meta = json.loads((out / "config.json").read_text())
    assert meta["tokenizer"] == "tokenizer.json"
    assert {k: meta["model"][k] for k in ("method", "window", "mini_batch", "suffix_len", "prime_hidden")} == \
        {"method": "e2e", "window": 8, "mini_batch": 4, "suffix_len": 1, "prime_hidden": 48}
    loaded = load_model_dir(out)
    assert loaded.tokenizer == str(out / "tokenizer.json")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("the cat sat on a mat and the dog ran far " * 2)
    code, stdout, err = _run(["generate", "--model-dir", str(out), "--prompt-file", str(prompt),
                              "--max-new-tokens", "6", "--greedy", "--no-stop"], capsys)
    assert code == 0, err
    assert "decode: 6 tokens" in err and stdout.strip()
    with torch.no_grad():  # generation equals the model's greedy choices, TTT steps included
        ids = torch.tensor([[1] + [3 + i % 10 for i in range(11)]])
        tokens = Generator(loaded.model, loaded.update).generate(ids, 5, SamplingConfig(greedy=True)).tokens
    assert tokens.shape == (1, 5)


def test_command_swa_with_bytes_tokenizer(sources, tmp_path, capsys):
    src, _ = sources["mistral"]
    code, _, err = _run(["convert-hf", str(src), "--out", str(tmp_path / "m"), "--method", "swa", "--mini-batch", "4",
                         "--tokenizer", "bytes", "--dtype", "bfloat16"], capsys)
    assert code == 0, err
    loaded = load_model_dir(tmp_path / "m")
    assert loaded.tokenizer == "bytes" and loaded.model.embed.weight.dtype == torch.bfloat16
    assert not (tmp_path / "m" / "tokenizer.json").exists()
    prompt = tmp_path / "p.txt"
    prompt.write_text("the cat sat")
    generate = ["generate", "--model-dir", str(tmp_path / "m"), "--prompt-file", str(prompt),
                "--max-new-tokens", "3", "--greedy", "--no-stop"]
    # the recorded bytes tokenizer has other BOS/EOS ids than the model: refused in one line ...
    code, _, err = _run(generate, capsys)
    assert code == 2 and "does not fit the model" in err and len(err.strip().splitlines()) == 1
    # ... and --tokenizer overrides the recorded one
    code, _, err = _run(generate + ["--tokenizer", str(src / "tokenizer.json")], capsys)
    assert code == 0, err


# ---------------------------------------------------------------- errors
def _copy(src, tmp_path, name="src"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _index_with_a_missing_shard(src):
    (src / "model.safetensors").rename(src / "model-0.safetensors")
    weight_map = {"model.embed_tokens.weight": "model-0.safetensors", "model.norm.weight": "model-1.safetensors"}
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


ERRORS = [
    ("unsupported model type", lambda s: edit_config(s, model_type="gpt2"), [], "model_type='gpt2' is not supported"),
    ("rope type", lambda s: edit_config(s, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}),
     [], "rope_type='yarn' is not supported"),
    ("o_proj bias", lambda s: edit_config(s, attention_bias=True), [], "attention_bias=true is not supported"),
    ("activation", lambda s: edit_config(s, hidden_act="gelu"), [], "hidden_act='gelu' is not supported"),
    ("shape mismatch", lambda s: edit_config(s, intermediate_size=80), [],
     "tensor model.layers.0.mlp.gate_proj.weight has shape (96, 64); the config implies (80, 64)"),
    ("missing tensor", lambda s: edit_config(s, num_hidden_layers=4), [], "tensor model.layers.3"),
    ("missing config", lambda s: (s / "config.json").unlink(), [], "has no config.json"),
    ("missing weights", lambda s: (s / "model.safetensors").unlink(), [], "has neither model.safetensors"),
    ("missing shard", lambda s: _index_with_a_missing_shard(s), [],
     "model-1.safetensors is listed in model.safetensors.index.json but missing"),
    ("no tokenizer", lambda s: (s / "tokenizer.json").unlink(), [], "has no tokenizer.json; pass --tokenizer"),
    ("bad window", lambda s: None, ["--method", "swa", "--window", "2"], "window k=2 must be >= mini_batch b=4"),
    ("bad method", lambda s: None, ["--method", "e2e", "--suffix-len", "3"], "suffix_len=3 must be in [1, n_layers-1=2]"),
]


@pytest.mark.parametrize("case", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_are_one_line_and_write_nothing(sources, tmp_path, capsys, case):
    _, change, args, message = case
    src = _copy(sources["llama"][0], tmp_path)
    change(src)
    out = tmp_path / "out" / "model"
    method = [] if "--method" in args else ["--method", "e2e"]
    code, _, err = _run(["convert-hf", str(src), "--out", str(out), "--mini-batch", "4", *method, *args], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    assert not out.parent.exists() or not list(out.parent.iterdir())  # no temporary directory left behind


def test_source_specific_errors(sources, tmp_path, capsys):
    code, _, err = _run(["convert-hf", str(sources["mistral"][0]), "--out", str(tmp_path / "m"), "--method", "fa"],
                        capsys)
    assert code == 2 and "sliding_window=8" in err and "--method swa" in err
    qwen = _copy(sources["qwen2"][0], tmp_path, "qwen")
    edit_config(qwen, model_type="llama")  # q/k/v biases have no place in a Llama model
    code, _, err = _run(["convert-hf", str(qwen), "--out", str(tmp_path / "q"), "--method", "fa"], capsys)
    assert code == 2 and "self_attn.k_proj.bias has no place" in err, err
    edit_config(qwen, model_type="qwen2", use_sliding_window=True, layer_types=["sliding_attention"] * 3)
    code, _, err = _run(["convert-hf", str(qwen), "--out", str(tmp_path / "q"), "--method", "fa"], capsys)
    assert code == 2 and "use_sliding_window=true" in err, err
    (tmp_path / "taken").mkdir()
    code, _, err = _run(["convert-hf", str(sources["llama"][0]), "--out", str(tmp_path / "taken"), "--method", "fa"],
                        capsys)
    assert code == 2 and "already exists" in err
    code, _, err = _run(["convert-hf", "no-such-org/no-such-model", "--out", str(tmp_path / "h"), "--method", "fa"],
                        capsys)
    assert code == 2 and "no-such-org/no-such-model" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = _run(["convert-hf", str(tmp_path / "missing"), "--out", str(tmp_path / "h"), "--method", "fa"],
                        capsys)
    assert code == 2 and "is not a checkpoint directory" in err
