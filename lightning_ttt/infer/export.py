"""Export a model as ``model.safetensors`` + ``config.json``, written atomically."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors.torch import save_file

from lightning_ttt.config import EXPORT_CONFIG, EXPORT_FORMAT, EXPORT_WEIGHTS
from lightning_ttt.io import default_file_mode, sibling_temporary_dir
from lightning_ttt.model.transformer import Transformer


def export_model(model: Transformer, out: str | Path, tokenizer: str | None = "bytes",
                 files: dict[str, Path] | None = None) -> Path:
    """Write ``out/`` via a temporary sibling directory renamed into place; ``out`` must not exist.

    ``tokenizer`` is recorded for commands that need text (``None``: unknown; they then ask for one).
    ``files`` (name -> source path) are copied in beside the weights, e.g. the ``tokenizer.json``
    that a relative ``tokenizer`` spec names (resolved against the directory when loading).
    The weights are written from the model's own tensors, without another copy in memory.
    """
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new --out directory")
    tmp = sibling_temporary_dir(out)
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / EXPORT_WEIGHTS), metadata={"format": EXPORT_FORMAT})
        os.chmod(tmp / EXPORT_WEIGHTS, default_file_mode())  # safetensors creates it 0600
        meta = {"format": EXPORT_FORMAT, "model": model.cfg.to_dict(), "tokenizer": tokenizer}
        (tmp / EXPORT_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
        for name, source in (files or {}).items():
            shutil.copyfile(source, tmp / name)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
