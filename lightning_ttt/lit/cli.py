"""The LightningCLI: ``ttt fit|validate|test --config recipes/...``."""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Any

from jsonargparse import ArgumentError, Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from lightning_ttt.config import resolved_settings
from lightning_ttt.data.datamodule import LongContextDataModule
from lightning_ttt.io import yaml_problem
from lightning_ttt.lit.messages import release_callbacks
from lightning_ttt.lit.module import TTTLanguageModel
from lightning_ttt.lit.resume import check_resume
from lightning_ttt.lit.trainer import TTTTrainer


class SettingsError(ValueError):
    """A setting the run cannot start with; ``ttt`` prints it as one line and exits 2."""


def explain(err: ArgumentError) -> str:
    """jsonargparse's multi-line message as one line that names the option."""
    message = str(err).strip()
    key = re.match(r'Parser key "([\w.]+)"[^:]*:\s*(.*)', message, re.S)
    if key is None:
        return message.splitlines()[0]
    detail = re.sub(r"Expected an? <class '(\w+)'>", r"expected \1", key.group(2).splitlines()[0].strip())
    return f"--{key.group(1)}: {detail}"


def broken_config(args: ArgsType) -> str | None:
    """``--config FILE: not valid YAML (line 3, ...)`` for the first ``--config`` file of ``args`` that is
    not YAML (jsonargparse's message does not name the file), else None."""
    args = list(args) if isinstance(args, (list, tuple)) else sys.argv[1:]
    for i, arg in enumerate(args):
        path = args[i + 1] if arg == "--config" and i + 1 < len(args) else arg.partition("=")[2] \
            if arg.startswith("--config=") else None
        if path and Path(path).is_file():
            problem = yaml_problem(Path(path).read_text(errors="replace"))
            if problem is not None:
                return f"--config {path}: not valid YAML ({problem})"
    return None


def settings_errors(hook: Callable[..., Any]) -> Callable[..., Any]:
    """``hook`` (a data or model ``prepare_data``/``setup``, run by the Trainer before any step) with its
    ``ValueError``/``OSError`` (missing data, a bad strategy, ...) raised as ``SettingsError``."""

    @functools.wraps(hook)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            return hook(*args, **kwargs)
        except (ValueError, OSError) as err:
            raise SettingsError(str(err)) from err

    return checked


class TTTArgumentParser(LightningArgumentParser):
    """Writes ``model.config`` with the values the run uses: ``--print_config`` and the run's saved
    ``config.yaml`` show every model setting, the preset's where the recipe sets none (the tokenizer's
    ``vocab_size``, ``bos_id`` and ``eos_id`` stay null unless set: they follow ``data.tokenizer``)."""

    def dump(self, cfg: Namespace, *args: Any, **kwargs: Any) -> str:
        if isinstance(cfg, Namespace) and cfg.get("model.preset") is not None and "model.config" in cfg:
            cfg = cfg.clone()
            settings = cfg["model.config"]
            given = vars(settings) if isinstance(settings, Namespace) else settings
            try:
                cfg["model.config"] = Namespace(**resolved_settings(cfg["model.preset"], cfg["model.method"], given))
            except ValueError:  # invalid settings: written as given; building the model reports the problem
                pass
        return super().dump(cfg, *args, **kwargs)


class TTTLightningCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Lightning's, less ``predict``: the model has no prediction output (``ttt generate`` writes text)."""
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name != "predict"}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.seq_len", "model.seq_len")
        for name in ("vocab_size", "bos_id", "eos_id"):  # the model's vocabulary follows the tokenizer
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            raise SettingsError(broken_config(args) or explain(err)) from err

    def _parse_ckpt_path(self) -> None:
        """Keep the config given: LightningCLI would replace its model settings with the ones saved in
        ``--ckpt_path`` (silently training another model); ``instantiate_classes`` checks the checkpoint."""

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, OSError) as err:
            raise SettingsError(str(err)) from err
        for component in (self.datamodule, self.model):  # their checks of data, strategy and init_from
            for hook in ("prepare_data", "setup"):
                setattr(component, hook, settings_errors(getattr(component, hook)))

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """The checkpoint is checked first: a wrong ``--ckpt_path`` is reported before the Trainer starts."""
        ckpt_path = self.config[self.subcommand].get("ckpt_path") if self.subcommand else None
        if ckpt_path:
            check_resume(str(ckpt_path), self.model)
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ModuleNotFoundError) as err:  # e.g. an accelerator this machine lacks
            raise SettingsError(f"trainer: {str(err).strip()}") from err
        trainer.callbacks.extend(release_callbacks())  # the start-up messages held by `ttt` print as the run starts
        if ckpt_path and self.subcommand == "fit" and trainer.logger is not None:
            rank_zero_info(f"resuming from {ckpt_path}: this run logs into {trainer.log_dir} (what was logged "
                           "before the resume stays where it was written)")
        return trainer


def cli_main(args: ArgsType = None, run: bool = True) -> TTTLightningCLI:
    return TTTLightningCLI(
        TTTLanguageModel, LongContextDataModule, trainer_class=TTTTrainer, parser_class=TTTArgumentParser, args=args,
        run=run, save_config_kwargs={"overwrite": True}, parser_kwargs={"default_env": False, "exit_on_error": False},
    )
