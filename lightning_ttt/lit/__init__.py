"""Lightning glue: the LightningModule (outer objective), Trainer defaults and the CLI."""

from lightning_ttt.lit.checkpoint_io import AtomicCheckpointIO
from lightning_ttt.lit.module import TTTLanguageModel
from lightning_ttt.lit.trainer import TTTTrainer

__all__ = ["AtomicCheckpointIO", "TTTLanguageModel", "TTTTrainer"]
