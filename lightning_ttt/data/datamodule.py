"""LightningDataModule serving fixed-length byte windows from local text or the embedded stdlib corpus."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader

from lightning_ttt.data.corpus import load_documents, split_documents
from lightning_ttt.data.tokenizer import ByteTokenizer
from lightning_ttt.data.windows import WindowDataset


class TextDataModule(L.LightningDataModule):
    """Byte-level language-modeling data.

    Batches are ``{"input_ids": LongTensor[B, T], "targets": LongTensor[B, T],
    "loss_mask": BoolTensor[B, T]}`` with ``T = seq_len`` and ``targets`` shifted by one.

    Args:
        sources: ``"stdlib"`` (the running interpreter's stdlib ``.py`` files) and/or local
            ``.txt``/``.jsonl``/``.json`` files, directories or glob patterns.
        text_field: key holding the text in ``.jsonl``/``.json`` records.
        seq_len: tokens per training example.
        batch_size: examples per batch (per device).
        val_fraction: share of documents (by name hash) held out for validation.
        max_val_windows: use only the first N validation windows (None: all), same on every rank.
        num_workers: DataLoader worker processes.
        seed: seed of the training shuffle.
    """

    def __init__(
        self,
        sources: list[str] = ["stdlib"],  # noqa: B006 - copied below, never mutated
        text_field: str = "text",
        seq_len: int = 256,
        batch_size: int = 8,
        val_fraction: float = 0.05,
        max_val_windows: int | None = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(sources, str) or not sources:
            raise ValueError(f"sources must be a non-empty list of strings, got {sources!r}")
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if max_val_windows is not None and max_val_windows < 1:
            raise ValueError(f"max_val_windows must be >= 1 or None, got {max_val_windows}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()
        self.sources = list(sources)
        self.text_field = text_field
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.max_val_windows = max_val_windows
        self.num_workers = num_workers
        self.seed = seed
        self._tokenizer = ByteTokenizer()
        self.train_dataset: WindowDataset | None = None
        self.val_dataset: WindowDataset | None = None

    @property
    def tokenizer(self) -> ByteTokenizer:
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.vocab_size

    @property
    def bos_id(self) -> int:
        return self._tokenizer.bos_id

    @property
    def eos_id(self) -> int:
        return self._tokenizer.eos_id

    def setup(self, stage: str | None = None) -> None:
        """Read, split and window the corpus (once, on every rank)."""
        if self.train_dataset is not None:
            return
        docs = load_documents(
            self.sources, self._tokenizer, self.text_field, progress=rank_zero_only.rank == 0
        )
        train_docs, val_docs = split_documents(docs, self.val_fraction)
        names = ", ".join(self.sources)
        if not train_docs or not val_docs:
            raise ValueError(
                f"val_fraction={self.val_fraction} splits {len(docs)} documents from [{names}] into "
                f"{len(train_docs)} train / {len(val_docs)} validation; both must be non-empty"
            )
        build = dict(seq_len=self.seq_len, bos_id=self.bos_id, eos_id=self.eos_id, vocab_size=self.vocab_size)
        self.train_dataset = WindowDataset.from_documents(train_docs, source=f"train split of [{names}]", **build)
        val = WindowDataset.from_documents(val_docs, source=f"validation split of [{names}]", **build)
        self.val_dataset = val.take(self.max_val_windows)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._require(self.train_dataset), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._require(self.val_dataset), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def _require(self, dataset: WindowDataset | None) -> WindowDataset:
        if dataset is None:
            raise RuntimeError("TextDataModule.setup() must be called before requesting a dataloader")
        return dataset

    def _loader(self, dataset: WindowDataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
