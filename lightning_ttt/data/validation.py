"""Validation: a fixed list of pre-cut windows drawn across the held-out documents, the same number of
batches on every rank.

With a window limit, the windows are a seeded selection spread over all documents of the split: each
document's windows are ranked in a seeded random order, and windows are taken rank by rank (first one
window of every document, then a second of every document, ...), documents within a rank in a seeded
order. So ``L`` windows from ``D >= L`` documents come from ``L`` different documents, and fewer
documents share ``L`` evenly. The selection keeps its taking order, so any prefix of it (e.g. a
``limit_val_batches``) still spans documents. It depends only on the data and the seed, never on the
run or the rank.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_ttt.data.packing import make_batch
from lightning_ttt.data.sources import Records, first_record
from lightning_ttt.data.stream import StreamSpec

VALIDATION_SEED = 0  # fixed, so every run validates on the same windows whatever its data.seed


@dataclass(frozen=True)
class WindowSet:
    """Validation windows and what they cover.

    ``windows`` [N, T+1] int32, ``valid`` [N] real-token counts, ``documents_read`` documents of the
    split read, ``documents`` documents the windows come from, ``tokens`` targets they score, and a
    one-line ``summary``.
    """

    windows: np.ndarray
    valid: np.ndarray
    documents_read: int
    documents: int
    tokens: int
    summary: str


def scored_tokens(windows: np.ndarray, valid: np.ndarray, bos_id: int) -> int:
    """Targets that the loss scores in these windows (real tokens that are not BOS)."""
    targets = windows[:, 1:]  # [N, T]
    real = np.arange(targets.shape[1])[None, :] < (valid[:, None] - 1)  # [N, T]
    return int((real & (targets != bos_id)).sum())


def collect_windows(records: Records, spec: StreamSpec, limit: int | None = None,
                    seed: int = VALIDATION_SEED) -> WindowSet:
    """Windows of the split: all of them in stream order when ``limit`` is None or not below their count,
    else a seeded selection of ``limit`` spread over every document (see the module docstring). Reads the
    whole split once; holds at most ``limit`` windows plus one document's."""
    reader, packer = spec.reader(records.text_key), spec.packer()
    in_order: list[tuple] | None = []  # every window (window, valid, doc) while they fit within the limit
    best: list[tuple] = []  # heap of (-rank, -order, doc, j, window, valid), the worst choice on top
    for batch in records.dataset.iter(batch_size=1):
        doc = reader(first_record(batch))
        if doc is None:
            continue
        packer.push(doc.tokens)
        found = list(iter(packer.pop, None))  # this document's windows (concat: those it completes)
        index = reader.counts.docs - 1  # the document's place among the split's documents
        if in_order is not None:
            in_order.extend((np.array(w, dtype=np.int32), v, index) for w, v in found)
            if limit is not None and len(in_order) > limit:
                in_order = None
        if limit is not None:
            _offer(best, found, index, limit, seed)
    if in_order is not None:
        picked = in_order
    else:
        taking = sorted(best, key=lambda item: (-item[0], -item[1]))  # rank by rank, documents in seeded order
        picked = [(window, valid, doc) for _, _, doc, _, window, valid in taking]
    return _window_set(picked, reader, packer, spec)


def first_windows(records: Records, spec: StreamSpec, count: int = 1) -> WindowSet:
    """The first ``count`` windows in stream order, reading no further (a probe that windows exist)."""
    reader, packer = spec.reader(records.text_key), spec.packer()
    picked: list[tuple] = []
    for batch in records.dataset.iter(batch_size=1):
        doc = reader(first_record(batch))
        if doc is None:
            continue
        packer.push(doc.tokens)
        while len(picked) < count and (window := packer.pop()) is not None:
            picked.append((np.array(window[0], dtype=np.int32), window[1], reader.counts.docs - 1))
        if len(picked) >= count:
            break
    return _window_set(picked, reader, packer, spec)


def _offer(best: list[tuple], found: list[tuple[np.ndarray, int]], doc: int, limit: int, seed: int) -> None:
    """Offer one document's windows to the bounded heap ``best`` of the ``limit`` lowest (rank, order) keys."""
    if not found:
        return
    rng = np.random.Generator(np.random.PCG64([seed, doc]))
    order = rng.random()  # the document's place within a rank
    ranks = np.empty(len(found), dtype=np.int64)
    ranks[rng.permutation(len(found))] = np.arange(len(found))  # window j is the ranks[j]-th taken of its document
    for j in np.flatnonzero(ranks < limit):
        item = (-int(ranks[j]), -order, doc, int(j))
        if len(best) >= limit and item[:2] <= best[0][:2]:
            continue  # not better than the worst kept choice
        window, valid = found[j]
        entry = (*item, np.array(window, dtype=np.int32), valid)
        if len(best) < limit:
            heapq.heappush(best, entry)
        else:
            heapq.heapreplace(best, entry)


def _window_set(picked: list[tuple], reader, packer, spec: StreamSpec) -> WindowSet:
    shape = (len(picked), spec.seq_len + 1)
    windows = np.stack([w for w, _, _ in picked]) if picked else np.zeros(shape, np.int32)  # [N, T+1]
    valid = np.asarray([v for _, v, _ in picked], dtype=np.int64)  # [N]
    documents = len({doc for _, _, doc in picked})
    tokens = scored_tokens(windows, valid, spec.tokenizer.bos_id)
    c, p = reader.counts, packer.counts
    summary = (f"{len(picked)} windows of {spec.seq_len} tokens ({tokens} scored tokens) from {documents} of "
               f"{c.docs} documents ({c.short} shorter than data.min_doc_tokens={spec.min_doc_tokens}, "
               f"{p['unwindowed']} shorter than a window, {p['padded']} windows padded)")
    return WindowSet(windows, valid, c.docs, documents, tokens, summary)


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
