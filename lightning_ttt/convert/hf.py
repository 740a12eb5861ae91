"""``ttt convert-hf``: a Hugging Face Llama-family causal LM as a full-attention, sliding-window or TTT-E2E model.

Reads a checkpoint of model type ``llama``, ``mistral``, ``qwen2`` or ``qwen3`` (``config.json`` plus
``model.safetensors`` or shards listed in ``model.safetensors.index.json``; a local directory or a hub
name) with safetensors alone, maps every tensor onto our ``Transformer`` and writes the directory of
``ttt export``. The mapping is exact: Hugging Face stores q/k projections in the half-split RoPE layout
that its ``rotate_half`` expects, so the converted model uses ``rope_layout="half"`` and the weights are
copied unpermuted; ``--method fa`` computes the original's logits.

``--method swa`` keeps the same weights and attends within a window. ``--method e2e`` adds a prime MLP
to each of the last ``suffix_len`` blocks, initialised so that the model starts as exactly its
sliding-window conversion and the first inner step already learns (see ``prime_weights``).

The reverse mapping (``to_hf``) writes a model with the Llama choices back as a Hugging Face
``LlamaForCausalLM`` state dict and config; the warm-start demonstration uses it to make a small
"pretrained" model with ``ttt fit``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from torch import Tensor
from tqdm.auto import tqdm

from lightning_ttt.config import METHODS, Method, ModelConfig
from lightning_ttt.infer.export import export_model
from lightning_ttt.model.transformer import Transformer

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
ROPE_TYPES = ("default", "llama3")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOKENIZER_FILE = "tokenizer.json"
_IGNORED = ("rotary_emb.inv_freq",)  # buffers some older checkpoints saved; recomputed from the config


def resolve_source(source: str) -> Path:
    """A local checkpoint directory, or the snapshot of hub repository ``source`` (config, weights, tokenizer)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise FileNotFoundError(f"{source} is not a checkpoint directory (nor a hub name like org/model)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, allow_patterns=["config.json", "model*.safetensors",
                                                              "model.safetensors.index.json", TOKENIZER_FILE]))
    except Exception as err:  # offline, unknown or gated repository: one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ValueError(f"{source} is not a local directory and downloading it from the Hugging Face hub failed "
                         f"({first})") from None


def read_hf_config(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path} has no config.json (expected a Hugging Face checkpoint directory)")
    try:
        config = json.loads(file.read_text())
    except ValueError as err:
        raise ValueError(f"{file} is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file} does not hold a JSON object")
    return config


# ---------------------------------------------------------------------------- configuration
def _rope_settings(hf: dict[str, Any], where: str) -> dict[str, Any]:
    """RoPE θ and scaling from ``rope_parameters`` (transformers 5) or ``rope_theta``/``rope_scaling`` (4.x)."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or params
    if not isinstance(params, dict) or not isinstance(scaling, dict) or "full_attention" in params:
        raise ValueError(f"{where}: rope_parameters per layer type are not supported")
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"{where}: rope_type={rope_type!r} is not supported; expected one of {', '.join(ROPE_TYPES)}")
    partial = hf.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ValueError(f"{where}: partial_rotary_factor={partial} is not supported; expected 1.0")
    settings: dict[str, Any] = {"rope_theta": float(params.get("rope_theta", hf.get("rope_theta", 10_000.0)))}
    if rope_type == "llama3":
        try:
            settings.update(rope_scaling="llama3", rope_factor=float(scaling["factor"]),
                            rope_low_freq_factor=float(scaling["low_freq_factor"]),
                            rope_high_freq_factor=float(scaling["high_freq_factor"]),
                            rope_original_max_positions=int(scaling["original_max_position_embeddings"]))
        except KeyError as err:
            raise ValueError(f"{where}: rope_type llama3 needs {err.args[0]}") from None
    return settings


def _token_id(hf: dict[str, Any], name: str) -> int | None:
    """``bos_token_id``/``eos_token_id``: an int, the first of a list (Llama 3 instruct models list
    several EOS ids), or None."""
    value = hf.get(name)
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) else None


def _source_window(hf: dict[str, Any], model_type: str, where: str) -> int | None:
    """The window of a source that already uses sliding-window attention in every layer (Mistral), else None."""
    layer_types = hf.get("layer_types") or []
    if model_type in ("qwen2", "qwen3"):
        if hf.get("use_sliding_window") or "sliding_attention" in layer_types:
            raise ValueError(f"{where}: use_sliding_window=true (sliding window in some layers only) is not supported")
        return None
    if model_type == "mistral" and hf.get("sliding_window") is not None:
        return int(hf["sliding_window"])
    if "sliding_attention" in layer_types:
        raise ValueError(f"{where}: layer_types with sliding_attention layers are not supported")
    return None


def model_config(hf: dict[str, Any], method: str = "fa", *, window: int | None = None, mini_batch: int = 1024,
                 suffix_len: int | None = None, prime_hidden: int | None = None, tied: bool = True,
                 where: str = "config.json", name: str | None = None) -> ModelConfig:
    """Our ``ModelConfig`` for the Hugging Face config ``hf`` converted to ``method``.

    ``tied``: whether the checkpoint holds no separate ``lm_head`` (used when the config does not say).
    Unsupported settings raise a one-line ``ValueError`` naming the setting and ``where``.
    """
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{where}: model_type={model_type!r} is not supported; expected one of {', '.join(MODEL_TYPES)}")
    if method not in METHODS:
        raise ValueError(f"--method {method!r} is unknown; expected one of {', '.join(METHODS)}")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"{where}: hidden_act={act!r} is not supported; expected 'silu' (SwiGLU)")
    for setting, where_bias in (("attention_bias", "every attention projection, o_proj included"),
                                ("mlp_bias", "the MLP projections")):
        if hf.get(setting):
            raise ValueError(f"{where}: {setting}=true is not supported (biases on {where_bias})")
    try:
        d_model, n_heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        arch = dict(vocab_size=int(hf["vocab_size"]), d_model=d_model, n_layers=int(hf["num_hidden_layers"]),
                    n_heads=n_heads, mlp_hidden=int(hf["intermediate_size"]))
    except KeyError as err:
        raise ValueError(f"{where}: missing {err.args[0]}") from None
    kv_heads = int(hf.get("num_key_value_heads") or n_heads)
    head_dim = hf.get("head_dim")
    source_window = _source_window(hf, model_type, where)
    if method == "fa" and source_window is not None:
        raise ValueError(f"{where}: sliding_window={source_window}: the source already attends within a window; "
                         "convert it with --method swa or e2e")
    bos, eos = _token_id(hf, "bos_token_id"), _token_id(hf, "eos_token_id")
    if bos is None and eos is None:
        raise ValueError(f"{where}: neither bos_token_id nor eos_token_id is set")
    n_layers = arch["n_layers"]
    suffix = (suffix_len if suffix_len is not None else max(1, n_layers // 4)) if method == "e2e" else 0
    return ModelConfig(
        method=method, **arch, suffix_len=suffix,
        window=window or source_window or 8192, mini_batch=mini_batch,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), init_std=float(hf.get("initializer_range", 0.02)),
        bos_id=bos if bos is not None else eos, eos_id=eos if eos is not None else bos,
        n_kv_heads=kv_heads if kv_heads != n_heads else None,
        head_dim_override=int(head_dim) if head_dim and int(head_dim) * n_heads != d_model else None,
        rope_layout="half", post_norm=False, qk_norm=model_type == "qwen3",
        tie_embeddings=bool(hf.get("tie_word_embeddings", tied)), qkv_bias=model_type == "qwen2",
        prime_hidden=prime_hidden if method == "e2e" else None,
        name=f"{name or model_type}-{method}",
        **_rope_settings(hf, where))


# ---------------------------------------------------------------------------- weights
def hf_names(cfg: ModelConfig) -> dict[str, str]:
    """Our parameter name -> the Hugging Face one, for every parameter but the prime MLPs and their norms."""
    names = {"embed.weight": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight"}
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    for i in range(cfg.n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        layer = {"seq_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                 "attn.wq": "self_attn.q_proj", "attn.wk": "self_attn.k_proj", "attn.wv": "self_attn.v_proj",
                 "attn.wo": "self_attn.o_proj", "mlp.w1": "mlp.gate_proj", "mlp.w3": "mlp.up_proj",
                 "mlp.w2": "mlp.down_proj"}
        if cfg.qk_norm:
            layer.update({"attn.q_norm": "self_attn.q_norm", "attn.k_norm": "self_attn.k_norm"})
        for a, b in layer.items():
            names[f"{ours}{a}.weight"] = f"{theirs}{b}.weight"
        if cfg.qkv_bias:
            for a, b in (("attn.wq", "q_proj"), ("attn.wk", "k_proj"), ("attn.wv", "v_proj")):
                names[f"{ours}{a}.bias"] = f"{theirs}self_attn.{b}.bias"
    return names


class SafetensorsCheckpoint:
    """The tensors of a checkpoint directory (one file or an index of shards), read one at a time."""

    def __init__(self, path: Path) -> None:
        index, single = path / "model.safetensors.index.json", path / "model.safetensors"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{index} has no weight_map") from None
            self.files = {name: path / file for name, file in weight_map.items()}
            for file in sorted(set(self.files.values())):
                if not file.is_file():
                    raise FileNotFoundError(f"{file} is listed in {index.name} but missing")
        elif single.is_file():
            with safe_open(single, framework="pt") as f:
                self.files = {name: single for name in f.keys()}
        else:
            extra = " (only PyTorch pickles, which are not loaded: re-save with safe_serialization)" \
                if any(path.glob("*.bin")) else ""
            raise FileNotFoundError(f"{path} has neither model.safetensors nor model.safetensors.index.json{extra}")

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def names(self) -> list[str]:
        return list(self.files)

    def read(self, names: list[str]) -> dict[str, Tensor]:
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        tensors = {}
        with tqdm(total=len(names), desc="reading weights", unit="tensor", disable=None) as progress:
            for file, wanted in by_file.items():
                with safe_open(file, framework="pt") as f:
                    for name in wanted:
                        tensors[name] = f.get_tensor(name)
                        progress.update()
        return tensors


def read_state(ckpt: SafetensorsCheckpoint, cfg: ModelConfig, expected: dict[str, torch.Size],
               where: Path) -> dict[str, Tensor]:
    """Our state dict (without prime MLPs) from the checkpoint; one-line errors for missing, extra or
    mis-shaped tensors."""
    names = hf_names(cfg)
    missing = [hf for hf in names.values() if hf not in ckpt]
    if missing:
        raise ValueError(f"{where}: tensor {missing[0]} is missing ({len(missing)} missing in all)")
    used = set(names.values()) | ({"lm_head.weight"} if cfg.tie_embeddings else set())
    extra = sorted(n for n in ckpt.names() if n not in used and not n.endswith(_IGNORED))
    if extra:
        raise ValueError(f"{where}: tensor {extra[0]} has no place in a {cfg.name} model "
                         f"({len(extra)} unused in all; unsupported architecture)")
    hf_state = ckpt.read(list(names.values()))
    state = {}
    for ours, theirs in names.items():
        tensor = hf_state[theirs]
        if tensor.shape != expected[ours]:
            raise ValueError(f"{where}: tensor {theirs} has shape {tuple(tensor.shape)}; the config implies "
                             f"{tuple(expected[ours])}")
        state[ours] = tensor
    return state


def prime_weights(cfg: ModelConfig, state: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
    """The prime MLP (and its norm) of every suffix block, initialised so that TTT-E2E starts as SWA:

    * ``w2`` (the output projection) is zero, so the prime sublayer adds nothing and the converted
      e2e model computes exactly its sliding-window conversion until the first inner step;
    * ``w1``/``w3`` (gate and up) and the prime norm are copies of the block's own MLP and of its
      pre-MLP norm (the first ``prime_hidden`` hidden units; any beyond the MLP's width are random
      normal(0, init_std)). The prime's hidden activations are then features the pretrained model
      already computes, so the inner gradient w.r.t. ``w2`` (hidden activations times the output
      error) is non-zero from the first mini-batch: the first step writes a linear read-out of those
      features into ``w2``. (Gradients w.r.t. ``w1``/``w3`` pass through ``w2`` and start from the
      second step.) Random ``w1``/``w3`` would also give a non-zero gradient, but on features the
      rest of the network has never seen.
    """
    width = cfg.prime_width
    prime = {}
    for i in range(cfg.prefix_len, cfg.n_layers):
        block = f"blocks.{i}."
        prime[f"{block}prime_norm.weight"] = state[f"{block}ffn_norm.weight"].clone()
        for name in ("w1", "w3"):
            source = state[f"{block}mlp.{name}.weight"]  # [mlp_hidden, D]
            rows = [source[:width]]
            if width > source.shape[0]:
                extra = torch.randn(width - source.shape[0], source.shape[1], generator=generator) * cfg.init_std
                rows.append(extra.to(source.dtype))
            prime[f"{block}prime.{name}.weight"] = torch.cat(rows).clone()  # [prime_hidden, D]
        d_model = state[f"{block}mlp.w2.weight"].shape[0]
        prime[f"{block}prime.w2.weight"] = state[f"{block}mlp.w2.weight"].new_zeros(d_model, width)  # [D, prime_hidden]
    return prime


# ---------------------------------------------------------------------------- the conversion
def convert_hf(source: str, out: str | Path, method: str, *, window: int | None = None,
               mini_batch: int = 1024, suffix_len: int | None = None, prime_hidden: int | None = None,
               tokenizer: str | None = None, dtype: str = "auto", seed: int = 0) -> Path:
    """Convert Hugging Face checkpoint ``source`` (directory or hub name) into exported directory ``out``.

    ``window`` defaults to the source's sliding window (Mistral) or 8192; ``suffix_len`` to a quarter
    of the blocks; ``prime_hidden`` to the MLP width. ``tokenizer``: the spec to record instead of the
    source's ``tokenizer.json`` (which is otherwise copied into ``out``; a source without one needs it).
    ``dtype``: ``auto`` keeps the checkpoint's. Returns ``out``; nothing is written on error.
    """
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"--out {out} already exists; choose a new directory")
    if dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is unknown; expected auto or one of {', '.join(DTYPES)}")
    path = resolve_source(source)
    hf = read_hf_config(path)
    ckpt = SafetensorsCheckpoint(path)
    cfg = model_config(hf, method, window=window, mini_batch=mini_batch, suffix_len=suffix_len,
                       prime_hidden=prime_hidden, tied="lm_head.weight" not in ckpt, where=str(path / "config.json"),
                       name=Path(source.rstrip("/")).name)
    files = {}
    if tokenizer is None:
        if not (path / TOKENIZER_FILE).is_file():
            raise FileNotFoundError(f"{path} has no {TOKENIZER_FILE}; pass --tokenizer (a tokenizer.json, a hub name "
                                    "or bytes)")
        files[TOKENIZER_FILE] = path / TOKENIZER_FILE
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = {name: tensor.shape for name, tensor in model.state_dict().items()}
    state = read_state(ckpt, cfg, expected, path)
    target = DTYPES[dtype] if dtype != "auto" else state["embed.weight"].dtype
    for name in state:  # one tensor at a time: never two copies of the whole model
        state[name] = state[name].to(target)
    if cfg.has_prime:
        state.update(prime_weights(cfg, state, torch.Generator().manual_seed(seed)))
    model.load_state_dict(state, strict=True, assign=True)
    return export_model(model, out, tokenizer if tokenizer is not None else TOKENIZER_FILE, files=files)


# ---------------------------------------------------------------------------- the reverse mapping
def to_hf(model: Transformer) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """A ``LlamaForCausalLM`` config dict and state dict computing what ``model`` computes with full
    attention. Needs the Llama choices: half RoPE, no post-norms, no QK-norm, no biases."""
    cfg = model.cfg
    needed = dict(rope_layout="half", post_norm=False, qk_norm=False, qkv_bias=False)
    wrong = [f"{k}={getattr(cfg, k)!r}" for k, v in needed.items() if getattr(cfg, k) != v]
    if cfg.has_prime or wrong:
        raise ValueError(f"only models with Llama's architecture map onto LlamaForCausalLM; this one has "
                         f"{', '.join(wrong) or 'prime MLPs (method e2e)'}")
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling == "llama3":
        rope.update(rope_type="llama3", factor=cfg.rope_factor, low_freq_factor=cfg.rope_low_freq_factor,
                    high_freq_factor=cfg.rope_high_freq_factor,
                    original_max_position_embeddings=cfg.rope_original_max_positions)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": cfg.vocab_size,
              "hidden_size": cfg.d_model, "intermediate_size": cfg.mlp_hidden, "num_hidden_layers": cfg.n_layers,
              "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
              "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps, "initializer_range": cfg.init_std,
              "tie_word_embeddings": cfg.tie_embeddings, "bos_token_id": cfg.bos_id, "eos_token_id": cfg.eos_id,
              "attention_bias": False, "mlp_bias": False, "rope_theta": cfg.rope_theta,
              "rope_scaling": None if cfg.rope_scaling == "none" else rope, "rope_parameters": rope}
    state = model.state_dict()
    return config, {hf: state[ours].detach().clone() for ours, hf in hf_names(cfg).items()}


# ---------------------------------------------------------------------------- command line
def convert_hf_command(source: str, /, *, out: str, method: Method, window: int | None = None, mini_batch: int = 1024,
                       suffix_len: int | None = None, prime_hidden: int | None = None, tokenizer: str | None = None,
                       dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto", seed: int = 0) -> int:
    """Convert a Hugging Face Llama, Mistral, Qwen2 or Qwen3 causal LM into an exported model directory.

    The directory is the one `ttt export` writes; the model has full attention (fa: the original),
    a sliding window (swa) or a sliding window plus prime MLPs for test-time training (e2e).

    Args:
        source: checkpoint directory (config.json + safetensors) or hub name (org/model).
        out: new directory to create.
        method: fa (the original), swa (the same weights within a window) or e2e (swa plus prime MLPs).
        window: attention window k for swa/e2e (default: the source's sliding window, else 8192).
        mini_batch: TTT mini-batch b.
        suffix_len: blocks with prime MLPs for e2e (default: the last quarter).
        prime_hidden: prime MLP width (default: the MLP's).
        tokenizer: tokenizer to record instead of copying the source's tokenizer.json (a file, a hub name, or bytes).
        dtype: weight dtype (auto: the checkpoint's).
        seed: seed of the random prime rows beyond the MLP width.
    """
    path = convert_hf(source, out, method, window=window, mini_batch=mini_batch, suffix_len=suffix_len,
                      prime_hidden=prime_hidden, tokenizer=tokenizer, dtype=dtype, seed=seed)
    print(f"converted {source} ({method}) to {path}")
    return 0
