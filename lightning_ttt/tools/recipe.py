"""A recipe's settings as ``ttt fit`` parses them, without building the model, the data or the trainer.

Tools that describe a run (``ttt plan``) take the same ``--config`` stacking and ``--key value``
overrides as ``ttt fit``: the parser is the LightningCLI's own, with its links. The tokenizer →
vocabulary link is applied on instantiation in a real run; here the tokenizer is loaded only when
that needs no network (``bytes``, a local file, a hub tokenizer already in the local cache).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

from lightning_ttt.config import ModelConfig, settings_dict
from lightning_ttt.data.datamodule import LongContextDataModule
from lightning_ttt.data.tokenizer import load_tokenizer
from lightning_ttt.lit.cli import TTTArgumentParser, TTTLightningCLI
from lightning_ttt.lit.module import TTTLanguageModel
from lightning_ttt.lit.trainer import TTTTrainer


class _ParseOnlyCLI(TTTLightningCLI):
    """``ttt fit``'s parser and links; instantiates nothing."""

    def instantiate_classes(self) -> None:
        pass


def parse_recipe(args: Sequence[str], prog: str) -> Namespace:
    """The settings ``ttt fit ARGS`` would run with (``SettingsError`` for a bad setting or file)."""
    with warnings.catch_warnings():  # called from `ttt`, whose own sys.argv Lightning would warn about
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = _ParseOnlyCLI(
            TTTLanguageModel, LongContextDataModule, trainer_class=TTTTrainer, parser_class=TTTArgumentParser,
            args=[*args, "--seed_everything=false"], run=False, load_from_checkpoint_support=False,
            parser_kwargs={"default_env": False, "exit_on_error": False, "prog": prog},
        )
    return cli.config


def _cached_hub_file(repo: str) -> str | None:
    """The local copy of a hub tokenizer's ``tokenizer.json``, or None (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo, "tokenizer.json")
    return found if isinstance(found, str) else None


def tokenizer_vocabulary(data: dict[str, Any]) -> tuple[dict[str, int], str]:
    """``vocab_size``, ``bos_id``, ``eos_id`` of ``data.tokenizer`` and where they come from.

    Empty (the preset's vocabulary stands) when the tokenizer is on the hub and not cached locally.
    """
    spec = str(data.get("tokenizer") or "bytes")
    local = spec == "bytes" or Path(spec).expanduser().exists() or spec.endswith(".json")
    path = spec if local else _cached_hub_file(spec)
    if path is None:
        return {}, f"the preset's (data.tokenizer={spec} is not in the local cache)"
    tok = load_tokenizer(path, data.get("bos_token"), data.get("eos_token"), data.get("invalid_utf8") or "error")
    return {"vocab_size": tok.vocab_size, "bos_id": tok.bos_id, "eos_id": tok.eos_id}, f"data.tokenizer={spec}"


def recipe_model(settings: dict[str, Any]) -> tuple[ModelConfig, str]:
    """The model a run of ``settings`` (``parse_recipe(...).as_dict()``) builds, the tokenizer link applied,
    and where its vocabulary comes from."""
    model = settings["model"]
    vocabulary, source = tokenizer_vocabulary(settings["data"])
    cfg = ModelConfig.from_settings(model["preset"], model["method"], settings_dict(model["config"]), **vocabulary)
    return cfg, source
