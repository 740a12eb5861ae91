"""Read the ``model_weights`` item of an orbax checkpoint with tensorstore (no JAX, no orbax).

A checkpoint root holds one directory per saved step, named by the plain integer step; each step
holds items such as ``model_weights/`` (and, in a trainer's checkpoint, ``opt_state/`` and
``train_ds_iter/``, which are ignored here). An item lists its arrays in the JSON ``_METADATA``
tree (key path, value type); empty (None) nodes are marked ``skip_deserialize``. The arrays are
zarr (v2, or v3 when ``use_zarr3``) inside one OCDBT key-value store, keyed by the dotted key path
(older orbax versions write one plain directory per array instead; both are read).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MODEL_WEIGHTS = "model_weights"
INSTALL_HINT = 'pip install -e ".[jax-import]"'


def _tensorstore():
    try:
        import tensorstore
    except ImportError:
        raise ImportError(f"reading orbax checkpoints needs the tensorstore package: {INSTALL_HINT} "
                          "(or pip install tensorstore)") from None
    return tensorstore


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def find_step(root: str | Path, step: int | None = None) -> Path:
    """The step directory to read: ``root/<step>``, by default the largest integer-named one.
    ``root`` may also be a step directory itself (one holding ``model_weights/``)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint root {root} is not a directory")
    steps = {int(p.name): p for p in root.iterdir() if p.is_dir() and p.name.isdigit()}
    if not steps and step is None and (root / MODEL_WEIGHTS).is_dir():
        return root
    if not steps:
        raise FileNotFoundError(f"{root} holds no step directory (an integer-named folder such as 4799/); "
                                "expected an orbax checkpoint root")
    if step is None:
        return steps[max(steps)]
    if step not in steps:
        raise FileNotFoundError(f"{root} has no step {step} (steps: {', '.join(map(str, sorted(steps)))})")
    return steps[step]


def model_weights_dir(root: str | Path, step: int | None = None) -> Path:
    """``<step>/model_weights`` of a checkpoint root, checked to exist."""
    step_dir = find_step(root, step)
    item = step_dir / MODEL_WEIGHTS
    if not item.is_dir():
        present = sorted(p.name for p in step_dir.iterdir() if p.is_dir())
        raise FileNotFoundError(f"{step_dir} has no {MODEL_WEIGHTS}/ item (it holds: {', '.join(present) or 'nothing'})")
    return item


@dataclass
class StoredArray:
    """One array of an item: its dotted name, shape and dtype; ``read()`` loads it."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    store: Any  # an open tensorstore.TensorStore
    item: Path

    def read(self) -> np.ndarray:
        try:
            return np.asarray(self.store.read().result())
        except Exception as err:  # tensorstore raises ValueError/RuntimeError subclasses with long texts
            raise ValueError(f"{self.item}: cannot read array {self.name} ({_first_line(err)})") from None


def _metadata(item: Path) -> dict[str, Any]:
    path = item / "_METADATA"
    if not path.is_file():
        raise FileNotFoundError(f"{item} has no _METADATA file; expected an orbax PyTree item")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path} is not readable JSON ({_first_line(err)})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("tree_metadata"), dict):
        raise ValueError(f"{path} has no tree_metadata; expected orbax PyTree metadata")
    return meta


def array_names(meta: dict[str, Any], where: Path) -> list[str]:
    """Dotted names of the stored arrays in the ``_METADATA`` tree, skipping empty (None) nodes."""
    names = []
    for entry in meta["tree_metadata"].values():
        try:
            value = entry["value_metadata"]
            if value.get("skip_deserialize") or value.get("value_type") == "None":
                continue
            names.append(".".join(str(key["key"]) for key in entry["key_metadata"]))
        except (KeyError, TypeError, AttributeError):
            raise ValueError(f"{where}/_METADATA has an entry without key_metadata/value_metadata") from None
    return names


def open_item(item: str | Path) -> dict[str, StoredArray]:
    """Open every array of an orbax item (metadata only; nothing is read yet)."""
    ts = _tensorstore()
    item = Path(item).resolve()
    meta = _metadata(item)
    driver = "zarr3" if meta.get("use_zarr3") else "zarr"
    ocdbt = (item / "manifest.ocdbt").is_file()
    context = ts.Context()  # one cache for the OCDBT tree shared by all arrays
    arrays = {}
    for name in array_names(meta, item):
        kvstore = ({"driver": "ocdbt", "base": f"file://{item}/", "path": name} if ocdbt
                   else {"driver": "file", "path": f"{item}/{name}/"})
        try:
            store = ts.open({"driver": driver, "kvstore": kvstore}, read=True, context=context).result()
        except Exception as err:
            raise ValueError(f"{item}: cannot open array {name} ({_first_line(err)})") from None
        arrays[name] = StoredArray(name, tuple(store.shape), np.dtype(store.dtype.numpy_dtype), store, item)
    return arrays
