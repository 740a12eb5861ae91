"""The authors' model settings (their Hydra ``model:``/``training:`` keys) as our ``ModelConfig``.

Their checkpoints carry no configuration, so the architecture of an imported checkpoint comes
from a preset or from a file with their keys: a YAML/JSON holding a ``model:`` section (and
optionally ``training:``), or a resolved config that nests both under ``config:``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning_ttt.config import ModelConfig

# their model key -> our ModelConfig field; all required, so a hand-written file cannot silently
# fall back to one of our defaults
MODEL_KEYS = {
    "vocab_size": "vocab_size", "hidden_size": "d_model", "intermediate_size": "mlp_hidden",
    "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads", "sliding_window_size": "window",
    "mini_batch_size": "mini_batch", "rope_theta": "rope_theta", "bos_token_id": "bos_id",
    "eos_token_id": "eos_id", "suffix_len": "suffix_len",
}
OPTIONAL_KEYS = {"rms_norm_eps": "norm_eps", "initializer_range": "init_std"}
# their settings our model implements with one value only
SUPPORTED_ONLY = {"qk_norm": True, "pre_norm": True, "post_norm": True, "tie_word_embeddings": True,
                  "feed_forward_prime": "swiglu", "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
SEQUENCE_BLOCKS = {"SWA": "swa", "self_attention": "fa"}
TRAIN_MODES = ("meta", "pretrain")


def model_config_from_authors(model: dict[str, Any], training: dict[str, Any] | None = None, *,
                              name: str | None = None, where: str = "config") -> ModelConfig:
    """Translate the authors' ``model`` (and ``training``) settings; one-line ``ValueError`` naming the key
    when a setting is missing or one our model cannot represent. Unknown keys (remat policies, dtypes,
    ``seq_len`` …) do not change the function and are ignored."""
    training = training or {}
    for key, required in SUPPORTED_ONLY.items():
        if key in model and model[key] != required:
            raise ValueError(f"{where}: model.{key}={model[key]!r} is not supported (this model implements only "
                             f"{required!r})")
    block = model.get("seq_modeling_block", "SWA")
    if block not in SEQUENCE_BLOCKS:
        raise ValueError(f"{where}: model.seq_modeling_block={block!r} is not supported (expected one of "
                         f"{', '.join(SEQUENCE_BLOCKS)})")
    method = SEQUENCE_BLOCKS[block]
    if method == "swa" and model.get("prime", True) and int(model.get("suffix_len", 0)) > 0:
        method = "e2e"
    not_needed = {"e2e": (), "swa": ("suffix_len",), "fa": ("suffix_len", "sliding_window_size")}[method]
    needed = [key for key in MODEL_KEYS if key not in model and key not in not_needed]
    if needed:
        raise ValueError(f"{where}: model.{needed[0]} is missing (the architecture needs "
                         f"{', '.join(MODEL_KEYS)})")
    fields = {ours: model[theirs] for theirs, ours in {**MODEL_KEYS, **OPTIONAL_KEYS}.items() if theirs in model}
    if method != "e2e":
        fields["suffix_len"] = 0
    train_mode = str(training.get("train_mode", "meta")).split()[0]
    if train_mode not in TRAIN_MODES:
        raise ValueError(f"{where}: training.train_mode={train_mode!r} is not supported (expected one of "
                         f"{', '.join(TRAIN_MODES)})")
    inner = training.get("optimizer_inner") or {}
    if inner.get("optimizer_type", "sgd") != "sgd":
        raise ValueError(f"{where}: training.optimizer_inner.optimizer_type={inner['optimizer_type']!r} is not "
                         "supported (the inner step is clipped SGD)")
    lr, clip = float(inner.get("lr", 1.0)), float(inner.get("clip_gradient", 1.0))
    try:
        return ModelConfig(
            method=method, inner_lr=lr, inner_clip=clip, ilr_init=float(training.get("ilr_init", lr)),
            ilr_warmup_steps=int(training.get("ilr_warmup_steps", 0)), meta_learning=train_mode == "meta",
            name=name or f"{model.get('name', 'imported')}-{method}", **fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def read_authors_config(path: str | Path) -> ModelConfig:
    """A YAML/JSON file with the authors' ``model:`` section (top level or under ``config:``)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path} does not exist")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
        line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"--config {path} is not readable YAML/JSON ({line})") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict) and "model" not in data:
        data = data["config"]  # a resolved config nested under `config:` (e.g. a fixture's reference.json)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ValueError(f"--config {path} has no `model:` section with the authors' model settings")
    training = data.get("training") if isinstance(data.get("training"), dict) else None
    return model_config_from_authors(data["model"], training, where=f"--config {path}")
