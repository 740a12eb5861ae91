"""Load a model for inference from a Lightning checkpoint or an exported directory, without pickles.

Checkpoints are read with ``torch.load(weights_only=True)``; exported directories hold
``model.safetensors`` and ``config.json`` only.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lightning_ttt.config import EXPORT_WEIGHTS, ModelConfig, read_export_meta
from lightning_ttt.io import load_safetensors
from lightning_ttt.data.tokenizer import Tokenizer, load_tokenizer
from lightning_ttt.model.transformer import Transformer
from lightning_ttt.model.weights import load_strict
from lightning_ttt.ttt.update import UpdateFn, make_update


@dataclass
class LoadedModel:
    model: Transformer  # in eval mode
    update: UpdateFn  # the inner step to use at inference
    tokenizer: str | None  # tokenizer spec (``data.tokenizer``); None when the source records none
    source: str = ""  # where it was loaded from, for messages

    def tokenizer_spec(self, override: str | None = None) -> str:
        """``override`` (a ``--tokenizer``) or the recorded tokenizer; a one-line error when neither exists."""
        spec = override or self.tokenizer
        if not spec:
            raise ValueError(f"{self.source} records no tokenizer; pass --tokenizer (a tokenizer.json file or a "
                             "Hugging Face hub name)")
        return spec


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    mmap: bool = False) -> tuple[dict, dict[str, Any]]:
    """Safely load a ``TTTLanguageModel`` Lightning checkpoint -> (checkpoint dict, model hyper-parameters).

    ``mmap`` maps the tensors from the file instead of reading them (to look at a checkpoint cheaply).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is not a checkpoint
        raise ValueError(f"{path} is not a loadable checkpoint (not an archive written by torch.save)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # unpickling refused or not a torch file
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ValueError(f"{path} is not a loadable checkpoint (safe loading: {first})") from None
    hp: Any = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or "preset" not in hp or "method" not in hp or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a lightning_ttt checkpoint (no state_dict or hyper_parameters.preset/method)")
    return ckpt, {k: v for k, v in hp.items() if not k.startswith("_")}  # LightningCLI adds e.g. `_instantiator`


def config_from_hparams(hp: dict[str, Any], source: str) -> ModelConfig:
    """The model a checkpoint was trained with, from the hyper-parameters ``TTTLanguageModel`` saved."""
    try:
        return ModelConfig.from_settings(hp["preset"], hp["method"], hp.get("config"), vocab_size=hp.get("vocab_size"),
                                         bos_id=hp.get("bos_id"), eos_id=hp.get("eos_id"))
    except (KeyError, TypeError) as err:
        raise ValueError(f"{source} is not a TTTLanguageModel checkpoint (hyper-parameters: {err})") from None


def model_state(ckpt: dict) -> dict[str, torch.Tensor]:
    """The Transformer's weights in a ``TTTLanguageModel`` checkpoint (its ``model.`` entries)."""
    return {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedModel:
    """A ``TTTLanguageModel`` Lightning checkpoint -> model (without building the LightningModule), the
    evaluation-time inner step, tokenizer spec."""
    ckpt, hp = read_checkpoint(path, map_location)
    model = Transformer(config_from_hparams(hp, str(path)))
    load_strict(model, model_state(ckpt), str(path))
    model.eval()
    tokenizer = (ckpt.get("datamodule_hyper_parameters") or {}).get("tokenizer", "bytes")
    return LoadedModel(model, make_update(model.cfg), tokenizer if isinstance(tokenizer, str) else "bytes", str(path))


def load_model_dir(path: str | Path, map_location: str = "cpu") -> LoadedModel:
    """A directory written by ``export_model`` -> model, default inner step, tokenizer spec.

    The model is built on the meta device and takes the loaded tensors as its parameters, so only
    one copy of the weights is ever in memory.
    """
    path = Path(path)
    meta = read_export_meta(path)
    if not (path / EXPORT_WEIGHTS).is_file():
        raise FileNotFoundError(f"{path} is not an exported model directory (no {EXPORT_WEIGHTS})")
    cfg = ModelConfig.from_exported(path)
    state = load_safetensors(path / EXPORT_WEIGHTS, device=str(map_location))
    with torch.device("meta"):
        model = Transformer(cfg)
    load_strict(model, state, str(path), assign=True)
    model.eval()
    return LoadedModel(model, make_update(model.cfg), _tokenizer_in(path, meta.get("tokenizer", "bytes")), str(path))


def check_model_dir(path: str | Path) -> None:
    """A one-line error unless ``path`` holds an exported model whose config and weights header read
    (the weights themselves are not loaded)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    read_export_meta(path)
    weights = path / EXPORT_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{path} is not an exported model directory (no {EXPORT_WEIGHTS})")
    try:
        with safe_open(str(weights), framework="pt") as f:
            f.keys()
    except SafetensorError as err:
        raise ValueError(f"{weights} is damaged ({str(err).strip().splitlines()[0][:160]}); write it again "
                         "(e.g. ttt export)") from None


def fitting_tokenizer(spec: str, cfg: ModelConfig) -> Tokenizer:
    """Load tokenizer ``spec``; a one-line error when it has more ids than the model or other BOS/EOS ids."""
    tokenizer = load_tokenizer(spec)
    if tokenizer.vocab_size > cfg.vocab_size or (tokenizer.bos_id, tokenizer.eos_id) != (cfg.bos_id, cfg.eos_id):
        raise ValueError(f"tokenizer {spec!r} ({tokenizer.vocab_size} ids, BOS {tokenizer.bos_id}, EOS "
                         f"{tokenizer.eos_id}) does not fit the model (vocab_size {cfg.vocab_size}, BOS {cfg.bos_id}, "
                         f"EOS {cfg.eos_id})")
    return tokenizer
def _tokenizer_in(path: Path, spec: str | None) -> str | None:
    """A relative tokenizer spec naming a file inside the exported directory (``ttt convert-hf`` copies
    the source's tokenizer.json there) becomes that file's path; any other spec stays as it is."""
    if spec and not Path(spec).is_absolute() and (path / spec).is_file():
        return str(path / spec)
    return spec


def load_any(ckpt: str | None = None, model_dir: str | None = None) -> LoadedModel:
    if (ckpt is None) == (model_dir is None):
        raise ValueError("give exactly one of a checkpoint (--ckpt) or an exported model directory (--model-dir)")
    return load_checkpoint(ckpt) if ckpt is not None else load_model_dir(model_dir)
