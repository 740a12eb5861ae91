"""Exact peak of live tensor memory on any device, by watching every op (for checking ``ttt plan``).

``PeakTensorBytes`` is a dispatch mode: each op's output storages are recorded with weak
references, and after every op the bytes of the storages still alive are summed. CPU tensors have
no allocator statistics, so this is how a CPU test measures what a training step holds at its peak.
"""

from __future__ import annotations

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class PeakTensorBytes(TorchDispatchMode):
    """Tracks live tensor storages created inside the mode plus those given to ``track``; ``peak`` in bytes."""

    def __init__(self, min_bytes: int = 1024) -> None:
        super().__init__()
        self.min_bytes = min_bytes  # smaller storages (scalars, norms' statistics) are not counted: faster
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = self.peak = 0

    def track(self, tensors) -> None:
        """Count tensors that exist already (parameters, inputs)."""
        for t in tensors:
            self._add(t)
        self._sweep()

    def _add(self, t) -> None:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            storage = t.untyped_storage()
            key = storage._cdata
            if key not in self.live and storage.nbytes() >= self.min_bytes:
                self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                self.current += storage.nbytes()

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]
        self.peak = max(self.peak, self.current)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._sweep()  # drop what died since the last op; the op's inputs are alive while it runs
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            self._add(t)
        self.peak = max(self.peak, self.current)
        return out
