"""Reading a reference fixture (numbers from the authors' JAX code) into our model.

Naming: a fixture array ``params.<name>`` is our parameter ``<name>.weight``. Fixture matrices
are stored ``[in, out]`` (applied as ``x @ W``) and ours ``[out, in]`` (``nn.Linear``), so every
2-D weight except the embedding is transposed. Prime weights use the absolute block index.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_ttt.config import ModelConfig
from lightning_ttt.model.transformer import Transformer
from lightning_ttt.ttt.update import UpdateFn, effective_inner_lr, make_update

# fixture model setting -> ModelConfig field
_MODEL_FIELDS = {
    "vocab_size": "vocab_size", "hidden_size": "d_model", "intermediate_size": "mlp_hidden",
    "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads", "mini_batch_size": "mini_batch",
    "sliding_window_size": "window", "rms_norm_eps": "norm_eps", "initializer_range": "init_std",
    "bos_token_id": "bos_id", "eos_token_id": "eos_id", "rope_theta": "rope_theta", "suffix_len": "suffix_len",
}
# fixture settings our model implements only with one value
_REQUIRED = {"qk_norm": True, "pre_norm": True, "post_norm": True, "tie_word_embeddings": True,
             "feed_forward_prime": "swiglu", "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


@dataclass
class ReferenceMode:
    """One mode of a fixture: the model config, whether the inner loop runs, and its update rule."""

    name: str
    config: ModelConfig
    meta: bool
    outer_step: int  # the fixture's outer step, for the inner-lr warm-up
    inner_lr: float  # effective inner lr = lr × ilr multiplier at the fixture's outer step
    ilr_multiplier: float

    def update_fn(self) -> UpdateFn:
        return make_update(self.config, self.outer_step)


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def mode_from_settings(name: str, settings: dict[str, Any]) -> ReferenceMode:
    """Translate a fixture's ``model``/``training`` settings (overrides applied) into a mode."""
    model, training = settings["model"], settings["training"]
    for key, required in _REQUIRED.items():
        if key in model and model[key] != required:
            raise ValueError(f"fixture setting model.{key}={model[key]!r} is not supported (expected {required!r})")
    fields = {ours: model[theirs] for theirs, ours in _MODEL_FIELDS.items() if theirs in model}
    block = model.get("seq_modeling_block", "SWA")
    if block not in ("SWA", "self_attention"):
        raise ValueError(f"fixture setting model.seq_modeling_block={block!r} is not supported (SWA or self_attention)")
    if block == "self_attention":
        method = "fa"
    else:
        method = "e2e" if model.get("prime", False) and fields.get("suffix_len", 0) > 0 else "swa"
    if method != "e2e":
        fields["suffix_len"] = 0
    train_mode = str(training.get("train_mode", "meta")).split()[0]
    if train_mode not in ("meta", "pretrain"):
        raise ValueError(f"fixture setting training.train_mode={train_mode!r} is not supported (meta or pretrain)")
    inner = training.get("optimizer_inner", {})
    lr, clip = float(inner.get("lr", 1.0)), float(inner.get("clip_gradient", 1.0))
    warmup, ilr_init = int(training.get("ilr_warmup_steps", 0)), float(training.get("ilr_init", lr))
    cfg = ModelConfig(method=method, inner_lr=lr, inner_clip=clip, ilr_init=ilr_init, ilr_warmup_steps=warmup,
                      meta_learning=train_mode == "meta", attention_kernel="explicit", name=name, **fields)
    step = int(settings.get("outer_step", 0))
    eff = effective_inner_lr(lr, ilr_init, warmup, step)
    return ReferenceMode(name, cfg, meta=method == "e2e" and train_mode == "meta", outer_step=step, inner_lr=eff,
                         ilr_multiplier=eff / lr)


class Fixture:
    """A reference fixture: ``NAME.npz`` with its ``NAME.json`` beside it."""

    def __init__(self, npz_path: str | Path) -> None:
        self.path = Path(npz_path)
        if not self.path.is_file():
            raise FileNotFoundError(f"fixture file {self.path} does not exist")
        json_path = self.path.with_suffix(".json")
        if not json_path.is_file():
            raise FileNotFoundError(f"fixture config {json_path} is missing (expected beside {self.path.name})")
        self.spec = json.loads(json_path.read_text())
        with np.load(self.path, allow_pickle=False) as npz:
            self.arrays = {k: npz[k] for k in npz.files}
        for key in ("input_ids", "target_tokens", "loss_masks"):
            if key not in self.arrays:
                raise ValueError(f"fixture {self.path.name} lacks the array {key!r}")

    def modes(self) -> dict[str, ReferenceMode]:
        base = {"model": self.spec["model"], "training": self.spec.get("training", {}),
                "outer_step": self.spec.get("outer_step", 0)}
        modes = {}
        for name, mode in self.spec.get("modes", {"meta": {"overrides": {}}}).items():
            settings = copy.deepcopy(base)
            for dotted, value in mode.get("overrides", {}).items():
                _set(settings, dotted, value)
            modes[name] = mode_from_settings(name, settings)
        return modes

    def batch(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.arrays
        return (torch.as_tensor(a["input_ids"], dtype=torch.long, device=device),
                torch.as_tensor(a["target_tokens"], dtype=torch.long, device=device),
                torch.as_tensor(a["loss_masks"], dtype=torch.bool, device=device))

    def load_into(self, model: Transformer) -> None:
        """Copy ``params.*`` into ``model`` (strict: every model parameter must be present)."""
        state = {}
        for key, value in self.arrays.items():
            if not key.startswith("params."):
                continue
            name = key[len("params."):]
            ours = f"{name}.weight"
            tensor = torch.from_numpy(np.ascontiguousarray(value))
            state[ours] = tensor.T if tensor.dim() == 2 and name != "embed" else tensor
        expected = dict(model.named_parameters())
        missing = sorted(set(expected) - set(state))
        if missing:
            raise ValueError(f"fixture {self.path.name} has no parameters for {', '.join(missing)}")
        with torch.no_grad():
            for name, param in expected.items():
                if tuple(state[name].shape) != tuple(param.shape):
                    raise ValueError(f"fixture parameter {name} has shape {tuple(state[name].shape)}, "
                                     f"the model expects {tuple(param.shape)}")
                param.copy_(state[name])


def to_fixture_layout(name: str, tensor: torch.Tensor) -> np.ndarray:
    """Our parameter-shaped tensor (possibly with leading batch dims) in the fixture's [in, out] layout."""
    if name.endswith(("w1", "w2", "w3", "wq", "wk", "wv", "wo")):
        tensor = tensor.mT
    return tensor.detach().cpu().numpy()
