"""The LightningCLI: ``ttt fit|validate|test --config recipes/...``."""

from __future__ import annotations

from lightning.pytorch.cli import ArgsType, LightningCLI

from lightning_ttt.data.datamodule import LongContextDataModule
from lightning_ttt.lit.module import TTTLanguageModel
from lightning_ttt.lit.trainer import TTTTrainer


class TTTLightningCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.seq_len", "model.seq_len")
        for name in ("vocab_size", "bos_id", "eos_id"):  # the model's vocabulary follows the tokenizer
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")

    def before_fit(self) -> None:
        self._check_vocabulary()

    def before_validate(self) -> None:
        self._check_vocabulary()

    def before_test(self) -> None:
        self._check_vocabulary()

    def _check_vocabulary(self) -> None:
        data, cfg = self.datamodule, self.model.cfg
        vocab = getattr(data, "vocab_size", None)
        if vocab is not None and vocab > cfg.vocab_size:
            raise ValueError(f"the data's tokenizer has {vocab} ids but model vocab_size={cfg.vocab_size}; "
                             "set model.config.vocab_size >= the tokenizer's vocabulary")


def cli_main(args: ArgsType = None, run: bool = True) -> TTTLightningCLI:
    return TTTLightningCLI(
        TTTLanguageModel, LongContextDataModule, trainer_class=TTTTrainer, args=args, run=run,
        save_config_kwargs={"overwrite": True}, parser_kwargs={"default_env": False},
    )
