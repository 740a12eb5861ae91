"""Packing documents into ``seq_len + 1``-token windows, and windows into batches.

* ``document``: each document becomes ``[BOS] + tokens + [EOS]`` and is cut into windows that
  never cross it. Window k starts at token ``k * seq_len``, so consecutive windows share one
  token and every target is predicted once. ``tail="drop"`` drops a document's last incomplete
  window (and documents shorter than one window); ``tail="pad"`` pads it with EOS and masks
  the padded targets out of the loss.
* ``concat``: documents are joined as ``[BOS] d1 [EOS] [BOS] d2 [EOS] ...`` and cut into
  windows regardless of boundaries (the authors' pretraining style); the remainder carries
  over to the next document.

Either way the loss is masked where the target is BOS. A packer holds the not-yet-windowed
tokens (``pending``), so its state is small and exact.
"""

from __future__ import annotations

import numpy as np
import torch

PACKINGS = ("document", "concat")
TAILS = ("drop", "pad")


class Packer:
    """Push documents, pop windows ``(tokens [seq_len + 1] int32, number of real tokens)``."""

    def __init__(self, seq_len: int, bos_id: int, eos_id: int) -> None:
        self.seq_len = seq_len
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pending = np.zeros(0, dtype=np.int32)  # tokens not yet fully windowed
        self.cursor = 0  # start of the next window in `pending`
        self.counts = {"windows": 0, "padded": 0, "unwindowed": 0}

    def push(self, tokens: np.ndarray) -> None:
        raise NotImplementedError

    def pop(self) -> tuple[np.ndarray, int] | None:
        """The next window, or None when another document is needed."""
        size = self.seq_len + 1
        if len(self.pending) - self.cursor >= size:
            window = self.pending[self.cursor:self.cursor + size]
            self.cursor += self.seq_len
            self.counts["windows"] += 1
            return window, size
        return None

    def _wrap(self, tokens: np.ndarray) -> np.ndarray:
        out = np.empty(len(tokens) + 2, dtype=np.int32)
        out[0], out[-1] = self.bos_id, self.eos_id
        out[1:-1] = tokens
        return out

    def state_dict(self) -> dict:
        return {"pending": torch.from_numpy(self.pending[self.cursor:].copy()), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.pending = state["pending"].numpy().astype(np.int32, copy=True)
        self.cursor = 0
        self.counts = {k: int(v) for k, v in state["counts"].items()}


class DocumentPacker(Packer):
    """Windows inside one document at a time; see the module docstring."""

    def __init__(self, seq_len: int, bos_id: int, eos_id: int, tail: str = "drop") -> None:
        if tail not in TAILS:
            raise ValueError(f"data.tail={tail!r} is unknown; expected one of {', '.join(TAILS)}")
        super().__init__(seq_len, bos_id, eos_id)
        self.tail = tail

    def push(self, tokens: np.ndarray) -> None:
        self.pending, self.cursor = self._wrap(tokens), 0
        if self.tail == "drop" and len(self.pending) < self.seq_len + 1:
            self.counts["unwindowed"] += 1

    def pop(self) -> tuple[np.ndarray, int] | None:
        window = super().pop()
        if window is not None or self.tail == "drop":
            return window
        left = len(self.pending) - self.cursor  # the first of these is the previous window's last target
        if left < 2:
            return None
        padded = np.full(self.seq_len + 1, self.eos_id, dtype=np.int32)
        padded[:left] = self.pending[self.cursor:]
        self.cursor = len(self.pending)
        self.counts["windows"] += 1
        self.counts["padded"] += 1
        return padded, left


class ConcatPacker(Packer):
    """Windows over the concatenation of all documents; see the module docstring."""

    def push(self, tokens: np.ndarray) -> None:
        self.pending, self.cursor = np.concatenate([self.pending[self.cursor:], self._wrap(tokens)]), 0


def make_packer(packing: str, seq_len: int, bos_id: int, eos_id: int, tail: str = "drop") -> Packer:
    if packing == "document":
        return DocumentPacker(seq_len, bos_id, eos_id, tail)
    if packing == "concat":
        return ConcatPacker(seq_len, bos_id, eos_id)
    raise ValueError(f"data.packing={packing!r} is unknown; expected one of {', '.join(PACKINGS)}")


def target_mask(targets: torch.Tensor, bos_id: int) -> torch.Tensor:
    """Which targets the loss scores: all but BOS (a document boundary is not predictable). Training
    batches and test-time training at inference use this same rule."""
    return targets != bos_id


def make_batch(windows: np.ndarray, valid: np.ndarray, bos_id: int) -> dict[str, torch.Tensor]:
    """Windows [B, T+1] and real-token counts [B] -> input_ids, targets, loss_mask, each [B, T]."""
    x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.int64))  # [B, T+1]
    targets = x[:, 1:].contiguous()  # [B, T], targets[:, j] = window token j + 1
    real = torch.arange(targets.shape[1]) < torch.from_numpy(np.asarray(valid, dtype=np.int64))[:, None] - 1  # [B, T]
    return {"input_ids": x[:, :-1].contiguous(), "targets": targets, "loss_mask": target_mask(targets, bos_id) & real}
