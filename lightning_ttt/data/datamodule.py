"""The DataModule: streaming long-context data, sharded over ranks and workers, exactly resumable."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from lightning_ttt.data.packing import PACKINGS, TAILS
from lightning_ttt.data.manifest import check_tokenizer
from lightning_ttt.data.scan import check_on_bad_record
from lightning_ttt.data.sources import Records, open_records
from lightning_ttt.data.stream import StreamSpec, TrainStream
from lightning_ttt.data.tokenizer import INVALID_UTF8, ByteTokenizer, load_tokenizer
from lightning_ttt.data.validation import ValidationWindows, collect_windows, first_windows

STATE_FORMAT = 1
# Settings that fix the batch sequence: an exact resume requires the same values.
_POSITION_SETTINGS = ("sources", "val_sources", "text_field", "packing", "seq_len", "batch_size", "min_doc_tokens",
                      "tail", "val_fraction", "shuffle_buffer", "distribute", "seed")
DISTRIBUTE = ("auto", "shards", "examples")


class LongContextDataModule(L.LightningDataModule):
    """Language-modeling windows streamed from local files, the stdlib, prepared shards or the hub.

    Batches are ``{"input_ids": LongTensor[B, T], "targets": LongTensor[B, T], "loss_mask":
    BoolTensor[B, T]}`` with ``T = seq_len`` and targets shifted by one. The training stream is
    endless (train by ``trainer.max_steps``), disjoint across ranks and workers, and its position
    is saved in checkpoints (``state_dict``) so a resumed run sees the same batches.

    Args:
        sources: ``stdlib``, local ``.txt``/``.jsonl``/``.json``/``.parquet`` files, directories or
            globs, ``ttt prepare`` directories, or one ``hf:<repo>[:<config>][@<split>]``.
        val_sources: validation sources; None splits ``sources`` by a hash of each document's name.
        text_field: record field holding the text (``.jsonl``/``.json``/``.parquet``/hub).
        tokenizer: ``bytes``, a ``tokenizer.json`` path, or a Hugging Face hub tokenizer name.
        bos_token, eos_token: special tokens of a Hugging Face tokenizer (None: detected).
        packing: ``document`` (windows never cross documents) or ``concat`` (documents joined).
        seq_len: tokens per training example.
        batch_size: examples per batch (per device).
        min_doc_tokens: drop documents with fewer tokens (the paper uses 8192 for pretraining).
        tail: ``document`` packing: ``drop`` or ``pad`` (and mask) each document's last partial window.
        val_fraction: share of documents held out by name hash when ``val_sources`` is None.
        max_val_windows: validation windows in total (None: all), split evenly over ranks: a seeded
            selection spread over every held-out document (the whole split is read once at setup).
        shuffle_buffer: windows held for shuffling per stream (0: stream order).
        num_workers: DataLoader workers per rank; each reads its own shards.
        distribute: how the ``ranks x workers`` streams divide the sources: ``shards`` (whole files or
            hub shards per stream; stream sizes may differ by one shard), ``examples`` (each stream
            reads everything and keeps 1 document in ``ranks x workers``), ``auto`` (``shards`` when
            the shard count divides the stream count, else ``examples``).
        seed: seeds the shard order per epoch and the shuffle buffers (the same on every rank).
        invalid_utf8: text tokenizers: ``error`` names the file and byte offset, ``replace`` uses
            U+FFFD. The byte tokenizer keeps the bytes of ``.txt`` files as they are.
        exact_resume: restore the data position from checkpoints (False: restart the stream).
        on_bad_record: every record of the local files is read before training starts; ``error`` stops
            there naming the first bad record (``file:line``), ``skip`` counts and reports bad records
            and leaves them out.
    """

    def __init__(
        self,
        sources: list[str] = ["stdlib"],  # noqa: B006 - copied below, never mutated
        val_sources: list[str] | None = None,
        text_field: str = "text",
        tokenizer: str = "bytes",
        bos_token: str | None = None,
        eos_token: str | None = None,
        packing: Literal["document", "concat"] = "document",
        seq_len: int = 256,
        batch_size: int = 8,
        min_doc_tokens: int = 0,
        tail: Literal["drop", "pad"] = "drop",
        val_fraction: float = 0.05,
        max_val_windows: int | None = 64,
        shuffle_buffer: int = 256,
        num_workers: int = 0,
        distribute: Literal["auto", "shards", "examples"] = "auto",
        seed: int = 0,
        invalid_utf8: Literal["error", "replace"] = "error",
        exact_resume: bool = True,
        on_bad_record: Literal["error", "skip"] = "error",
    ) -> None:
        super().__init__()
        check_on_bad_record(on_bad_record)
        _check_settings(sources, val_sources, packing, seq_len, batch_size, min_doc_tokens, tail, val_fraction,
                        max_val_windows, shuffle_buffer, num_workers, distribute, invalid_utf8)
        self.save_hyperparameters()
        self.sources = list(sources)
        self.val_sources = list(val_sources) if val_sources is not None else None
        self.text_field = text_field
        self.packing, self.tail = packing, tail
        self.seq_len, self.batch_size = seq_len, batch_size
        self.min_doc_tokens = min_doc_tokens
        self.val_fraction, self.max_val_windows = val_fraction, max_val_windows
        self.shuffle_buffer, self.num_workers, self.seed = shuffle_buffer, num_workers, seed
        self.distribute = distribute
        self.invalid_utf8, self.exact_resume = invalid_utf8, exact_resume
        self.on_bad_record = on_bad_record
        self.tokenizer = load_tokenizer(tokenizer, bos_token, eos_token, invalid_utf8)
        self.train_records: Records | None = None
        self.validation: tuple | None = None  # (windows [N, T+1], valid [N]) for all ranks
        self.validation_coverage: dict[str, int] = {}  # windows, documents and scored tokens of validation
        self._states: dict[int, dict] = {}  # logical stream -> state after the last consumed batch
        self._batches = 0  # training batches consumed by this rank
        self._resume: dict | None = None

    # ------------------------------------------------------------------ tokenizer (linked into the model)
    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def bos_id(self) -> int:
        return self.tokenizer.bos_id

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id

    def spec(self, split: str) -> StreamSpec:
        return StreamSpec(self.tokenizer, self.seq_len, self.packing, self.tail, split, self.val_fraction,
                          self.min_doc_tokens)

    @property
    def train_split(self) -> str:
        return "train" if self.val_sources is None and self.val_fraction > 0 else "all"

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        """Open the sources, cut the validation windows and check that training windows exist."""
        if self.train_records is not None:
            return
        records = self._open(self.sources, "data.sources")
        if self.val_sources is not None:
            val_records, val_split = self._open(self.val_sources, "data.val_sources"), "all"
        else:
            val_records, val_split = (records, "validation") if self.val_fraction > 0 else (None, "")
        if val_records is not None:
            found = collect_windows(val_records, self.spec(val_split), self.max_val_windows)
            where = f"validation split of {val_records.description}"
            if found.documents_read == 0 and val_split == "validation":  # a small corpus: the hash split drew none
                raise ValueError(f"{where}: data.val_fraction={self.val_fraction} holds out none of its documents "
                                 "(a hash of each name decides); give validation documents with data.val_sources "
                                 "(e.g. --data.val_sources '[held_out.txt]'), raise data.val_fraction, or set "
                                 "data.val_fraction 0 to train without validation")
            if len(found.windows) == 0:
                raise ValueError(f"{where}: no validation window: {found.summary}; lower data.seq_len, raise "
                                 "data.val_fraction or add longer documents")
            rank_zero_info(f"{where}: {found.summary}")
            self.validation = (found.windows, found.valid)
            self.validation_coverage = {"windows": len(found.windows), "documents": found.documents,
                                        "tokens": found.tokens}
        if stage in (None, "fit"):
            probe = first_windows(records, self.spec(self.train_split))
            if len(probe.windows) == 0:
                raise ValueError(f"train split of {records.description}: no document reaches seq_len + 1 = "
                                 f"{self.seq_len + 1} tokens ({probe.summary}); lower data.seq_len or add longer "
                                 "documents")
        self.train_records = records

    def _open(self, sources: list[str], setting: str) -> Records:
        records = open_records(sources, self.text_field, self.invalid_utf8, setting, on_bad_record=self.on_bad_record,
                               utf8_text=not isinstance(self.tokenizer, ByteTokenizer))
        if records.scan is not None and records.scan.bad:
            rank_zero_warn(f"{setting}: {records.scan.summary()}")
        for directory, manifest in records.manifests:
            check_tokenizer(directory, manifest, self.tokenizer)
        return records

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        records = self._require(self.train_records)
        rank, world = self._rank_world()
        states, batches = self._position(rank, world)
        streams = world * max(self.num_workers, 1)
        if records.num_shards % streams and self.distribute == "auto":
            rank_zero_info(f"data.sources has {records.num_shards} shards for {streams} streams (ranks x workers): "
                           f"each stream reads every shard and keeps 1 document in {streams}; set "
                           "data.distribute=shards, or use a shard count divisible by the stream count, to read less")
        stream = TrainStream(records, self.spec(self.train_split), self.batch_size, self.shuffle_buffer, self.seed,
                             rank, world, self.num_workers, states, batches, distribute=self.distribute)
        # One endless iteration: persistent workers change nothing but keep Lightning from suggesting them.
        workers = self.num_workers
        return DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=workers > 0,
                          pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader | list:
        if self.validation is None:
            if self.train_records is None:
                raise RuntimeError("LongContextDataModule.setup() must be called before requesting a dataloader")
            return []
        _, world = self._rank_world()
        windows, valid = self.validation
        if len(windows) < world:
            raise ValueError(f"validation has {len(windows)} windows for {world} ranks; raise data.max_val_windows "
                             "or add validation data")
        dataset = ValidationWindows(windows, valid, self.bos_id, world)  # Lightning's sampler splits it over ranks
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader | list:
        return self.val_dataloader()

    def _require(self, records: Records | None) -> Records:
        if records is None:
            raise RuntimeError("LongContextDataModule.setup() must be called before requesting a dataloader")
        return records

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    # ------------------------------------------------------------------ data position
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Record the position of each training batch as the trainer takes it."""
        if isinstance(batch, dict) and "_state" in batch:
            state = batch.pop("_state")
            self._states[int(state["stream"])] = state
            self._batches += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The data position of every rank (gathered: only rank 0 writes the checkpoint)."""
        local = {"states": self._states, "batches": self._batches}
        ranks = [local]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, local)
        return {"format": STATE_FORMAT, "tokenizer": self.tokenizer.name, "tokenizer_fingerprint":
                self.tokenizer.fingerprint, "vocab_size": self.vocab_size, "num_workers": self.num_workers,
                "settings": self._settings(), "ranks": ranks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("tokenizer_fingerprint") != self.tokenizer.fingerprint:
            raise ValueError(f"the checkpoint was trained with tokenizer {state.get('tokenizer')!r} (vocab_size "
                             f"{state.get('vocab_size')}) but data.tokenizer={self.tokenizer.name!r} (vocab_size "
                             f"{self.vocab_size}); use the checkpoint's tokenizer")
        self._resume = state

    def _settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _POSITION_SETTINGS}

    def _position(self, rank: int, world: int) -> tuple[dict[int, dict], int]:
        """The stream states this rank continues from: the checkpoint's, or the live ones."""
        if self._resume is None:
            return self._states, self._batches
        saved, self._resume = self._resume, None
        if not self.exact_resume:
            rank_zero_warn("data.exact_resume=False: the training data stream restarts from its beginning")
            return self._states, self._batches
        problems = [f"data.{k}={v!r} (checkpoint: {saved['settings'].get(k)!r})"
                    for k, v in self._settings().items() if saved["settings"].get(k) != v]
        if saved["num_workers"] != self.num_workers:
            problems.append(f"data.num_workers={self.num_workers} (checkpoint: {saved['num_workers']})")
        if len(saved["ranks"]) != world:
            problems.append(f"{world} ranks (checkpoint: {len(saved['ranks'])})")
        if problems:
            raise ValueError("cannot resume the data position exactly: " + ", ".join(problems) +
                             "; restore those settings or set data.exact_resume=false")
        mine = saved["ranks"][rank]
        self._states = {int(k): v for k, v in mine["states"].items()}
        self._batches = int(mine["batches"])
        return self._states, self._batches


def _check_settings(sources, val_sources, packing, seq_len, batch_size, min_doc_tokens, tail, val_fraction,
                    max_val_windows, shuffle_buffer, num_workers, distribute, invalid_utf8) -> None:
    """One-line errors naming the setting, before anything is read."""
    for name, value in (("sources", sources), ("val_sources", val_sources)):
        if value is not None and (isinstance(value, str) or not value):
            raise ValueError(f"data.{name} must be a non-empty list of source specs, got {value!r}")
    checks = [
        (packing in PACKINGS, f"data.packing={packing!r} is unknown; expected one of {', '.join(PACKINGS)}"),
        (tail in TAILS, f"data.tail={tail!r} is unknown; expected one of {', '.join(TAILS)}"),
        (invalid_utf8 in INVALID_UTF8, f"data.invalid_utf8={invalid_utf8!r} is unknown; expected one of "
                                       f"{', '.join(INVALID_UTF8)}"),
        (seq_len >= 1, f"data.seq_len must be >= 1, got {seq_len}"),
        (batch_size >= 1, f"data.batch_size must be >= 1, got {batch_size}"),
        (min_doc_tokens >= 0, f"data.min_doc_tokens must be >= 0, got {min_doc_tokens}"),
        (0.0 <= val_fraction < 1.0, f"data.val_fraction must be in [0, 1), got {val_fraction}"),
        (max_val_windows is None or max_val_windows >= 1, f"data.max_val_windows must be >= 1 or None, got "
                                                           f"{max_val_windows}"),
        (shuffle_buffer >= 0, f"data.shuffle_buffer must be >= 0, got {shuffle_buffer}"),
        (num_workers >= 0, f"data.num_workers must be >= 0, got {num_workers}"),
        (distribute in DISTRIBUTE, f"data.distribute={distribute!r} is unknown; expected one of "
                                   f"{', '.join(DISTRIBUTE)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
