"""Write checkpoints in the on-disk layout of the authors' orbax checkpoints, with tensorstore only.

Mirrors what their trainer leaves on disk: ``<root>/<step>/_CHECKPOINT_METADATA`` and
``<root>/<step>/model_weights/`` holding ``_METADATA`` (the key-path tree, empty nodes marked
``skip_deserialize``), ``_sharding``, ``array_metadatas/process_0`` and an OCDBT store whose data
sit in ``ocdbt.process_0/`` and whose root ``manifest.ocdbt`` + b-tree reference them. Arrays are
zarr v2 (zstd level 1, C order; zarr v3 with ``zarr3``), float32 unless ``dtype`` says otherwise, one
chunk each unless ``chunk_rows`` splits the leading axis.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import tensorstore as ts

HANDLER = "orbax.checkpoint._src.handlers.standard_checkpoint_handler.StandardCheckpointHandler"
OCDBT_CONFIG = {"max_inline_value_bytes": 1024, "max_decoded_node_bytes": 100_000_000, "compression": {"id": "zstd"}}
# the None leaves of the authors' model tree (norm biases, state indices, the absent lm_head, ...)
EMPTY_NODES = [
    ("step_index", "init"),
    ("language_model", "model", "ln_f", "bias"),
    ("language_model", "model", "h", "blocks", "seq_modeling_block", "q_norm", "bias"),
    ("language_model", "model", "h", "blocks", "seq_modeling_block", "k_norm", "bias"),
    ("language_model", "model", "h", "blocks", "seq_modeling_block", "kv_cache_index", "init"),
    ("language_model", "model", "h", "blocks", "seq_modeling_block", "chunk_index", "init"),
    ("language_model", "model", "h", "blocks", "seq_norm", "bias"),
    ("language_model", "model", "h", "blocks", "ffn_norm", "bias"),
    ("language_model", "model", "h", "blocks", "seq_post_norm", "bias"),
    ("language_model", "model", "h", "blocks", "ffn_post_norm", "bias"),
    ("language_model", "model", "h", "blocks", "ffn_prime_norm"),
    ("language_model", "model", "h", "blocks", "ffn_prime_post_norm"),
    ("language_model", "model", "h", "blocks", "feed_forward_prime"),
    ("language_model", "model", "h", "prime_storage", "ffn_prime_norm", "bias"),
    ("language_model", "model", "h", "prime_storage", "ffn_prime_post_norm", "bias"),
    ("language_model", "lm_head"),
]


def _entry(path: tuple[str, ...], shape: tuple[int, ...] | None) -> dict:
    keys = [{"key": key, "key_type": 2} for key in path]
    if shape is None:
        return {"key_metadata": keys, "value_metadata": {"value_type": "None", "skip_deserialize": True}}
    return {"key_metadata": keys,
            "value_metadata": {"value_type": "jax.Array", "skip_deserialize": False, "write_shape": list(shape)}}


def _zarr_spec(kvstore: dict, shape: tuple[int, ...], chunks: list[int], zarr3: bool, dtype: str) -> dict:
    if zarr3:
        return {"driver": "zarr3", "kvstore": kvstore,
                "metadata": {"shape": list(shape), "data_type": dtype,
                             "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
                             "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                                        {"name": "zstd", "configuration": {"level": 1}}]}}
    return {"driver": "zarr", "kvstore": kvstore,
            "metadata": {"shape": list(shape), "chunks": chunks, "dtype": {"float32": "<f4", "int32": "<i4"}.get(dtype, dtype),
                         "order": "C", "fill_value": None,
                         "filters": None, "compressor": {"id": "zstd", "level": 1}, "dimension_separator": "."}}


def write_item(item: Path, arrays: dict[str, np.ndarray], *, zarr3: bool = False, chunk_rows: int | None = None,
               dtype: str = "float32", empty_nodes: list[tuple[str, ...]] = EMPTY_NODES) -> Path:
    """An orbax PyTree item holding ``arrays`` (dotted names, stored as ``dtype``) plus the empty nodes."""
    item = Path(item).resolve()
    (item / "array_metadatas").mkdir(parents=True)
    context = ts.Context()
    process = {"driver": "ocdbt", "base": f"file://{item}/ocdbt.process_0/", "config": OCDBT_CONFIG}
    tree, sharding, array_meta = {}, {}, []
    for name, array in arrays.items():
        array = np.ascontiguousarray(array).astype(np.dtype(dtype) if dtype != "bfloat16" else ml_dtypes.bfloat16)
        chunks = list(array.shape)
        if chunk_rows and array.ndim > 1:
            chunks[0] = min(chunk_rows, chunks[0])
        spec = _zarr_spec({**process, "path": name}, array.shape, chunks, zarr3, dtype)
        ts.open(spec, create=True, context=context).result().write(array).result()
        path = tuple(name.split("."))
        tree[str(path)] = _entry(path, array.shape)
        sharding[base64.b64encode(name.encode()).decode()] = json.dumps(
            {"sharding_type": "NamedSharding", "shape": [1, 1], "axis_names": ["data", "state"],
             "partition_spec": [], "device_mesh": {"mesh": [[{"id": 0}]]}})
        array_meta.append({"array_metadata": {"param_name": name, "write_shape": list(array.shape),
                                              "chunk_shape": chunks, "ext_metadata": None}})
    for path in empty_nodes:
        tree[str(path)] = _entry(path, None)
    # the root database references the per-process data files, as after orbax's merge
    source = ts.KvStore.open(process, context=context).result()
    root = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{item}/", "config": OCDBT_CONFIG},
                           context=context).result()
    source.experimental_copy_range_to(root).result()
    meta = {"tree_metadata": tree, "use_zarr3": zarr3, "store_array_data_equal_to_fill_value": True,
            "custom_metadata": None}
    (item / "_METADATA").write_text(json.dumps(meta))
    (item / "_sharding").write_text(json.dumps(sharding))
    (item / "array_metadatas" / "process_0").write_text(json.dumps({"array_metadatas": array_meta}))
    return item


def write_checkpoint(root: Path, step: int, arrays: dict[str, np.ndarray], **item_options) -> Path:
    """``root/<step>/`` with ``_CHECKPOINT_METADATA`` and a ``model_weights`` item; returns the step directory."""
    step_dir = Path(root) / str(step)
    write_item(step_dir / "model_weights", arrays, **item_options)
    now = time.time_ns()
    (step_dir / "_CHECKPOINT_METADATA").write_text(json.dumps(
        {"item_handlers": {"model_weights": HANDLER}, "metrics": {}, "performance_metrics": {},
         "init_timestamp_nsecs": now, "commit_timestamp_nsecs": now, "custom_metadata": {}}))
    return step_dir
