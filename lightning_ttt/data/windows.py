"""Fixed-length training windows over tokenized documents (never crossing documents)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from lightning_ttt.data.corpus import Document


class WindowDataset(Dataset):
    """Map-style dataset of ``seq_len + 1``-token windows, stored as (doc, start) pairs.

    Each document becomes ``[bos] + tokens + [eos]`` inside one concatenated int32 array.
    Window ``k`` of a document starts at ``k * seq_len``, so consecutive windows share one
    boundary token and every target is predicted once; incomplete tails are dropped.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        offsets: np.ndarray,
        windows: np.ndarray,
        seq_len: int,
        bos_id: int,
        num_dropped: int = 0,
    ) -> None:
        self.tokens = tokens  # [total_tokens] int32, all kept documents with bos/eos
        self.offsets = offsets  # [num_docs] int64, start of each document in `tokens`
        self.windows = windows  # [num_windows, 2] int64, (doc index, start within doc)
        self.seq_len = seq_len
        self.bos_id = bos_id
        self.num_dropped = num_dropped  # documents shorter than seq_len + 1 tokens

    @classmethod
    def from_documents(
        cls,
        docs: Sequence[Document],
        seq_len: int,
        bos_id: int,
        eos_id: int,
        vocab_size: int | None = None,
        source: str = "corpus",
    ) -> WindowDataset:
        """Build windows from ``docs``; ``source`` names the corpus in errors and logs."""
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        lengths = np.array([len(d.tokens) + 2 for d in docs], dtype=np.int64)  # with bos/eos
        keep = lengths >= seq_len + 1
        kept = [d for d, k in zip(docs, keep) if k]
        num_dropped = len(docs) - len(kept)
        if not kept:
            raise ValueError(
                f"{source}: none of {len(docs)} documents reaches seq_len + 1 = {seq_len + 1} tokens "
                "(with bos/eos); lower seq_len or add longer documents"
            )
        lengths = lengths[keep]
        offsets = np.zeros(len(kept), dtype=np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        tokens = np.empty(int(lengths.sum()), dtype=np.int32)
        for doc, off, n in zip(kept, offsets, lengths):
            tokens[off] = bos_id
            tokens[off + 1 : off + n - 1] = doc.tokens
            tokens[off + n - 1] = eos_id
        if vocab_size is not None:
            _check_vocab(tokens, offsets, kept, vocab_size, source)

        per_doc = (lengths - 1) // seq_len  # complete windows per document
        doc_idx = np.repeat(np.arange(len(kept), dtype=np.int64), per_doc)
        first = np.repeat(np.cumsum(per_doc) - per_doc, per_doc)  # index of each doc's first window
        starts = (np.arange(len(doc_idx), dtype=np.int64) - first) * seq_len
        windows = np.stack([doc_idx, starts], axis=1)

        rank_zero_info(
            f"{source}: {len(windows)} windows of {seq_len} tokens from {len(kept)} documents "
            f"({num_dropped} shorter than {seq_len + 1} tokens dropped)"
        )
        return cls(tokens, offsets, windows, seq_len, bos_id, num_dropped)

    def take(self, n: int | None) -> WindowDataset:
        """The first ``n`` windows (all if ``n`` is None), sharing the token array."""
        windows = self.windows if n is None else self.windows[:n]
        return WindowDataset(self.tokens, self.offsets, windows, self.seq_len, self.bos_id, self.num_dropped)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        doc, start = self.windows[index]
        begin = self.offsets[doc] + start
        w = torch.from_numpy(self.tokens[begin : begin + self.seq_len + 1].astype(np.int64))  # [T+1]
        targets = w[1:]  # [T]
        return {"input_ids": w[:-1], "targets": targets, "loss_mask": targets != self.bos_id}


def _check_vocab(
    tokens: np.ndarray, offsets: np.ndarray, docs: Sequence[Document], vocab_size: int, source: str
) -> None:
    bad = (tokens < 0) | (tokens >= vocab_size)
    if bad.any():
        pos = int(bad.argmax())
        doc = docs[int(np.searchsorted(offsets, pos, side="right")) - 1]
        raise ValueError(
            f"{source}: document {doc.name!r} has token id {int(tokens[pos])} outside the model vocabulary "
            f"(vocab_size={vocab_size})"
        )
