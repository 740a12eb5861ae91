"""Load a model for inference from a Lightning checkpoint or an exported directory, without pickles.

Checkpoints are read with ``torch.load(weights_only=True)``; exported directories hold
``model.safetensors`` and ``config.json`` only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from lightning_ttt.config import ModelConfig
from lightning_ttt.infer.session import default_update
from lightning_ttt.model.transformer import Transformer
from lightning_ttt.ttt.inner_loop import UpdateFn

FORMAT = "lightning_ttt.export/1"
WEIGHTS, CONFIG = "model.safetensors", "config.json"


@dataclass
class LoadedModel:
    model: Transformer  # in eval mode
    update: UpdateFn  # the inner step to use at inference
    tokenizer: str  # tokenizer spec (``data.tokenizer``), "bytes" when unknown


def _load_weights(model: Transformer, state: dict[str, torch.Tensor], source: str) -> None:
    from lightning_ttt.lit.checkpoint_io import state_mismatch

    missing, unexpected, wrong = state_mismatch(model.state_dict(), state)
    if missing or unexpected or wrong:
        detail = "; ".join(part for part in (
            f"missing {', '.join(missing[:3])}" if missing else "",
            f"unexpected {', '.join(unexpected[:3])}" if unexpected else "",
            f"shape mismatch in {', '.join(wrong[:3])}" if wrong else "") if part)
        raise ValueError(f"{source} holds weights of another architecture than its config "
                         f"({model.cfg.name}, method {model.cfg.method}): {detail}")
    model.load_state_dict(state)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict, dict[str, Any]]:
    """Safely load a ``TTTLanguageModel`` Lightning checkpoint -> (checkpoint dict, model hyper-parameters)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # unpickling refused or not a torch file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ValueError(f"{path} is not a loadable checkpoint (safe loading: {first})") from None
    hp: Any = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or "preset" not in hp or "method" not in hp or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a lightning_ttt checkpoint (no state_dict or hyper_parameters.preset/method)")
    return ckpt, {k: v for k, v in hp.items() if not k.startswith("_")}  # LightningCLI adds e.g. `_instantiator`


def build_module(ckpt: dict, hp: dict[str, Any], source: str):
    """A ``TTTLanguageModel`` from hyper-parameters ``hp`` holding the checkpoint's weights, in eval mode."""
    from lightning_ttt.lit.module import TTTLanguageModel

    try:
        module = TTTLanguageModel(**hp)
    except TypeError as err:
        raise ValueError(f"{source} is not a TTTLanguageModel checkpoint ({err})") from None
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    _load_weights(module.model, state, source)
    return module.eval()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedModel:
    """A ``TTTLanguageModel`` Lightning checkpoint -> model, its ``inner_update`` hook, tokenizer spec."""
    ckpt, hp = read_checkpoint(path, map_location)
    module = build_module(ckpt, hp, str(path))
    tokenizer = (ckpt.get("datamodule_hyper_parameters") or {}).get("tokenizer", "bytes")
    return LoadedModel(module.model, module.inner_update, tokenizer if isinstance(tokenizer, str) else "bytes")


def load_model_dir(path: str | Path, map_location: str = "cpu") -> LoadedModel:
    """A directory written by ``export_model`` -> model, default inner step, tokenizer spec."""
    path = Path(path)
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise FileNotFoundError(f"{path} is not an exported model directory (needs {CONFIG} and {WEIGHTS})")
    meta = json.loads((path / CONFIG).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path / CONFIG} has format {meta.get('format')!r}; expected {FORMAT!r}")
    cfg = ModelConfig(**meta["model"])
    state = load_file(str(path / WEIGHTS), device=str(map_location))
    model = Transformer(cfg).to(next(iter(state.values())).dtype)
    _load_weights(model, state, str(path))
    model.eval()
    return LoadedModel(model, default_update(model), meta.get("tokenizer", "bytes"))


def load_any(ckpt: str | None = None, model_dir: str | None = None) -> LoadedModel:
    if (ckpt is None) == (model_dir is None):
        raise ValueError("give exactly one of a checkpoint (--ckpt) or an exported model directory (--model-dir)")
    return load_checkpoint(ckpt) if ckpt is not None else load_model_dir(model_dir)
