"""The endless, resumable training stream of one rank.

Each rank runs ``num_workers`` (at least one) *logical streams*; stream ``i`` of rank ``r`` reads
``split_dataset_by_node(records, rank=r * W + i, world_size=R * W)`` of the records, so all
streams are disjoint: whole shards, or every ``R * W``-th document (``distribute``). Each stream
shuffles shard order per epoch (same seed on every rank), tokenizes, packs, mixes windows in a
seeded shuffle buffer and yields batches forever.

Every batch carries ``"_state"``: the stream's exact position after it (epoch, ``datasets``
position, pending tokens, shuffle buffer, RNG). The DataModule keeps the state of the last batch
it consumed from each stream; a loader built from those states continues the batch sequence
exactly. DataLoader worker ``j`` runs stream ``(j + batches consumed) % W``, so the round-robin
order of workers picks up where it stopped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from lightning_ttt.data.documents import DocumentReader
from lightning_ttt.data.packing import make_batch, make_packer
from lightning_ttt.data.sources import Records, first_record
from lightning_ttt.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamSpec:
    """How records become windows: tokenizer, split, length filter and packing."""

    tokenizer: Tokenizer
    seq_len: int
    packing: str = "document"
    tail: str = "drop"
    split: str = "all"
    val_fraction: float = 0.0
    min_doc_tokens: int = 0

    def reader(self, text_key: str) -> DocumentReader:
        return DocumentReader(self.tokenizer, text_key, self.split, self.val_fraction, self.min_doc_tokens)

    def packer(self):
        tok = self.tokenizer
        return make_packer(self.packing, self.seq_len, tok.bos_id, tok.eos_id, self.tail)


def epoch_seed(seed: int, epoch: int) -> int:
    """The value given to ``datasets``' ``set_epoch``: it seeds the shard order, must be > 0."""
    return (seed % 2**31) * 100_003 + epoch + 1


class TrainStream(IterableDataset):
    """Batches ``{"input_ids", "targets", "loss_mask": [B, T], "_state"}`` for one rank, forever.

    Args:
        records: the training records (all ranks pass the same).
        spec: tokenizer, split and packing.
        batch_size: windows per batch.
        shuffle_buffer: windows held for shuffling (0: stream order).
        seed: seeds the shard order per epoch and the shuffle buffer.
        rank, world_size: this process's place among the data-parallel ranks.
        num_workers: DataLoader workers of this rank (0 runs one stream in the main process).
        states: state of each logical stream to resume from (``{stream index: state}``).
        batches: batches this rank has consumed so far (decides which worker runs which stream).
        epochs: stop after this many passes (None: repeat forever, for training by ``max_steps``).
        distribute: ``split_dataset_by_node`` strategy: ``shards`` (whole shards per stream, sizes may
            differ by one shard), ``examples`` (every stream reads all, keeps 1 document in R * W) or
            ``auto`` (shards when their count divides R * W, else examples).
    """

    def __init__(self, records: Records, spec: StreamSpec, batch_size: int, shuffle_buffer: int = 0, seed: int = 0,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0, states: dict[int, dict] | None = None,
                 batches: int = 0, epochs: int | None = None, distribute: str = "auto") -> None:
        self.records = records
        self.spec = spec
        self.batch_size = batch_size
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_streams = max(num_workers, 1)
        self.states = dict(states or {})
        self.batches = batches
        self.epochs = epochs
        self.distribute = distribute
        streams = world_size * self.num_streams
        if distribute == "shards" and records.num_shards < streams:
            raise ValueError(f"data.distribute='shards' needs at least one shard per stream: {records.description} has "
                             f"{records.num_shards} shards for {streams} streams (ranks x workers)")

    def __iter__(self):
        info = get_worker_info()
        worker = 0 if info is None else info.id
        if info is not None and info.num_workers != self.num_streams:
            raise RuntimeError(f"TrainStream built for {self.num_streams} workers runs under {info.num_workers}")
        index = (worker + self.batches) % self.num_streams
        stream = LogicalStream(self, index)
        if index in self.states:
            stream.load_state_dict(self.states[index])
        return stream.batches()


class LogicalStream:
    """One disjoint share of the records: read, tokenize, pack, shuffle, batch; exactly resumable."""

    def __init__(self, owner: TrainStream, index: int) -> None:
        self.owner = owner
        self.index = index
        self.node = owner.rank * owner.num_streams + index  # [rank, stream] flattened
        self.num_nodes = owner.world_size * owner.num_streams
        self.reader = owner.spec.reader(owner.records.text_key)
        self.packer = owner.spec.packer()
        size = owner.shuffle_buffer
        self.buffer = np.empty((size, owner.spec.seq_len + 1), dtype=np.int32)  # [S, T+1]
        self.buffer_valid = np.empty(size, dtype=np.int64)  # [S]
        self.filled = 0
        self.rng = np.random.Generator(np.random.PCG64([owner.seed, owner.rank, index]))
        self.epoch = 0
        self.epoch_windows = 0  # windows packed in the current epoch
        self.source_state: dict | None = None  # `datasets` position after the last record read
        self.num_batches = 0
        self._dataset = None

    # ------------------------------------------------------------------ iteration
    def batches(self):
        spec, size = self.owner.spec, self.owner.batch_size
        windows: list[np.ndarray] = []
        valid: list[int] = []
        records = self._open_epoch()
        while True:
            window = self.packer.pop()
            if window is None:
                record = next(records, None)
                if record is None:
                    if not self._next_epoch():
                        return
                    records = self._open_epoch()
                    continue
                self.source_state = self._dataset.state_dict()
                doc = self.reader(first_record(record))
                if doc is not None:
                    self.packer.push(doc.tokens)
                continue
            self.epoch_windows += 1
            window = self._shuffle(window)
            if window is None:
                continue
            windows.append(window[0])
            valid.append(window[1])
            if len(windows) == size:
                batch = make_batch(np.stack(windows), np.asarray(valid), spec.tokenizer.bos_id)
                windows, valid = [], []
                self.num_batches += 1
                batch["_state"] = self.state_dict()
                yield batch

    def _open_epoch(self):
        from datasets.distributed import split_dataset_by_node

        ds = split_dataset_by_node(self.owner.records.dataset, rank=self.node, world_size=self.num_nodes,
                                   strategy=self.owner.distribute)
        ds.set_epoch(epoch_seed(self.owner.seed, self.epoch))
        if self.source_state is not None:
            ds.load_state_dict(self.source_state)
        self._dataset = ds
        return iter(ds.iter(batch_size=1))

    def _next_epoch(self) -> bool:
        owner, counts = self.owner, self.reader.counts
        if self.epoch_windows == 0:
            raise ValueError(
                f"rank {owner.rank}, data stream {self.index} of {owner.num_streams}: no training window of "
                f"seq_len + 1 = {owner.spec.seq_len + 1} tokens in a whole pass over its share of "
                f"{owner.records.description} ({counts.docs} documents read, {counts.short} shorter than "
                f"data.min_doc_tokens, {self.packer.counts['unwindowed']} shorter than a window); lower data.seq_len "
                "or data.num_workers, or add longer documents")
        if owner.rank == 0 and self.index == 0:
            log.info("data stream 0 finished epoch %d: %d documents read, %d kept, %d shorter than min_doc_tokens, "
                     "%d windows (%d padded, %d documents shorter than a window dropped)", self.epoch, counts.docs,
                     counts.kept, counts.short, self.packer.counts["windows"], self.packer.counts["padded"],
                     self.packer.counts["unwindowed"])
        self.epoch += 1
        self.epoch_windows = 0
        self.source_state = None
        return owner.epochs is None or self.epoch < owner.epochs

    def _shuffle(self, window: tuple[np.ndarray, int]) -> tuple[np.ndarray, int] | None:
        """Put ``window`` into the buffer and take out a random one (None while the buffer fills)."""
        size = len(self.buffer)
        if size == 0:
            return window
        if self.filled < size:
            self.buffer[self.filled], self.buffer_valid[self.filled] = window
            self.filled += 1
            return None
        i = int(self.rng.integers(size))
        out = (self.buffer[i].copy(), int(self.buffer_valid[i]))
        self.buffer[i], self.buffer_valid[i] = window
        return out

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "stream": self.index, "epoch": self.epoch, "epoch_windows": self.epoch_windows,
            "batches": self.num_batches, "source": self.source_state,
            "packer": self.packer.state_dict(), "reader": self.reader.counts.state_dict(),
            "buffer": torch.from_numpy(self.buffer[:self.filled].copy()),  # [filled, T+1]
            "buffer_valid": torch.from_numpy(self.buffer_valid[:self.filled].copy()),  # [filled]
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["stream"] != self.index:
            raise ValueError(f"data stream {self.index} was given the state of stream {state['stream']}")
        buffer = state["buffer"].numpy()
        if buffer.shape[0] > len(self.buffer) or (len(buffer) and buffer.shape[1] != self.buffer.shape[1]):
            raise ValueError(f"saved shuffle buffer {tuple(buffer.shape)} does not fit data.shuffle_buffer="
                             f"{len(self.buffer)} and data.seq_len={self.owner.spec.seq_len}")
        self.epoch, self.epoch_windows = int(state["epoch"]), int(state["epoch_windows"])
        self.num_batches = int(state["batches"])
        self.source_state = state["source"]
        self.packer.load_state_dict(state["packer"])
        self.reader.counts.load_state_dict(state["reader"])
        self.filled = len(buffer)
        self.buffer[:self.filled] = buffer
        self.buffer_valid[:self.filled] = state["buffer_valid"].numpy()
        self.rng.bit_generator.state = state["rng"]
