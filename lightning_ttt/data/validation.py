"""Validation: a fixed list of pre-cut windows, the same number of batches on every rank."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_ttt.data.packing import make_batch
from lightning_ttt.data.sources import Records, first_record
from lightning_ttt.data.stream import StreamSpec


def collect_windows(records: Records, spec: StreamSpec,
                    limit: int | None = None) -> tuple[np.ndarray, np.ndarray, str, int]:
    """The first ``limit`` windows (all if None) in stream order, their real-token counts, and a summary.

    Returns ``windows`` [N, T+1] int32, ``valid`` [N] int64, a one-line report of the counts and the
    number of documents of the split that were read.
    """
    reader, packer = spec.reader(records.text_key), spec.packer()
    windows: list[np.ndarray] = []
    valid: list[int] = []
    for batch in records.dataset.iter(batch_size=1):
        doc = reader(first_record(batch))
        if doc is None:
            continue
        packer.push(doc.tokens)
        while (window := packer.pop()) is not None and (limit is None or len(windows) < limit):
            windows.append(np.array(window[0], dtype=np.int32))
            valid.append(window[1])
        if limit is not None and len(windows) >= limit:
            break
    c, p = reader.counts, packer.counts
    summary = (f"{len(windows)} windows of {spec.seq_len} tokens from {c.docs} documents ({c.short} shorter than "
               f"data.min_doc_tokens={spec.min_doc_tokens}, {p['unwindowed']} shorter than a window dropped, "
               f"{p['padded']} windows padded)")
    shape = (len(windows), spec.seq_len + 1)
    return (np.stack(windows) if windows else np.zeros(shape, np.int32)), np.asarray(valid, dtype=np.int64), summary, \
        c.docs


class ValidationWindows(Dataset):
    """Pre-cut validation windows as a map-style dataset of ``[T]`` examples.

    Under DDP Lightning gives rank ``r`` windows ``r, r + world_size, ...`` (its
    ``DistributedSampler``); build it with ``world_size`` so the count divides evenly and every
    rank runs the same number of batches without repeated windows.
    """

    def __init__(self, windows: np.ndarray, valid: np.ndarray, bos_id: int, world_size: int = 1) -> None:
        keep = len(windows) - len(windows) % world_size
        self.windows = windows[:keep]  # [N, T+1]
        self.valid = valid[:keep]  # [N]
        self.bos_id = bos_id

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        batch = make_batch(self.windows[index:index + 1], self.valid[index:index + 1], self.bos_id)
        return {key: value[0] for key, value in batch.items()}  # [1, T] -> [T]
