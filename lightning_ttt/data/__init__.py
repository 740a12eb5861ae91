"""Data pipeline: byte tokenizer, corpus loading, fixed-length windows and the DataModule."""

from lightning_ttt.data.corpus import Document, load_documents, split_documents
from lightning_ttt.data.datamodule import TextDataModule
from lightning_ttt.data.tokenizer import ByteTokenizer
from lightning_ttt.data.windows import WindowDataset

__all__ = ["ByteTokenizer", "Document", "TextDataModule", "WindowDataset", "load_documents", "split_documents"]
