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
from lightning_ttt.convert.authors_config import model_config_from_authors
from lightning_ttt.model.transformer import Transformer
from lightning_ttt.ttt.update import UpdateFn, effective_inner_lr, make_update


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
    cfg = model_config_from_authors(settings["model"], settings["training"], name=name, where="fixture")
    cfg = cfg.replace(attention_kernel="explicit")
    step = int(settings.get("outer_step", 0))
    eff = effective_inner_lr(cfg.inner_lr, cfg.ilr_init, cfg.ilr_warmup_steps, step)
    return ReferenceMode(name, cfg, meta=cfg.ttt_in_training, outer_step=step, inner_lr=eff,
                         ilr_multiplier=eff / cfg.inner_lr)


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
