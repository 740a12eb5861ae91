"""Plain torch.nn model code: layers, attention kernels, the Transformer."""

from lightning_ttt.model.transformer import Block, KVCache, Transformer, chunk_losses, masked_mean, token_nll

__all__ = ["Block", "KVCache", "Transformer", "chunk_losses", "masked_mean", "token_nll"]
