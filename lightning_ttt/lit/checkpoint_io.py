"""Checkpoint I/O that never leaves a half-written file and loads without executing pickles."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_ttt.io import atomic_write


NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # a full disk, a file-size limit, a quota


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the target directory, fsync, then ``os.replace`` it into place.

    A kill during saving leaves the previous checkpoint untouched. Loading uses
    ``torch.load(weights_only=True)``: tensors and plain containers only, no arbitrary code.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO does not take storage_options, got {storage_options!r}")
        try:
            atomic_write(path, lambda f: torch.save(checkpoint, f))
        except Exception as err:  # torch.save wraps a failed write (e.g. a full disk) in a RuntimeError
            cause = _os_error(err)
            if cause is None or cause.errno not in NO_SPACE:
                raise
            raise OSError(cause.errno, f"writing checkpoint {path} failed ({cause.strerror}: is the disk full?); "
                                       "the previous file there is unchanged") from err

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def _os_error(err: BaseException | None) -> OSError | None:
    """The first ``OSError`` in ``err``'s chain of causes and contexts."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
