"""Plain torch.nn model code: layers, attention kernels, the Transformer."""

from lightning_ttt.model.cache import KVCache, empty_caches
from lightning_ttt.model.transformer import Block, FastWeights, Transformer, chunk_losses, masked_mean, token_nll

__all__ = ["Block", "FastWeights", "KVCache", "Transformer", "chunk_losses", "empty_caches", "masked_mean", "token_nll"]
