"""Data pipeline: sources, tokenizers, packing, the resumable training stream and the DataModule.

Names are imported on first use, so DataLoader workers started with ``spawn`` import only the
stream's modules, not Lightning.
"""

from importlib import import_module

_EXPORTS = {
    "LongContextDataModule": "datamodule",
    "Document": "documents", "DocumentReader": "documents", "is_validation": "documents",
    "ConcatPacker": "packing", "DocumentPacker": "packing", "make_batch": "packing", "make_packer": "packing",
    "read_manifest": "manifest", "open_records": "sources", "StreamSpec": "stream", "TrainStream": "stream",
    "ByteTokenizer": "tokenizer", "HFTokenizer": "tokenizer", "load_tokenizer": "tokenizer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"lightning_ttt.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'lightning_ttt.data' has no attribute {name!r}")
