"""The KV cache of chunked attention: a small type and the one function that allocates it.

A cache holds the keys (QK-normed, before RoPE) and values of the last ``rows`` positions of one
layer, [B, Hkv, rows, hd] each (Hkv = the key/value heads, fewer than the query heads with
grouped-query attention), zero-filled before position 0 (attention masks those slots). Chunked
attention extends it by a chunk and keeps the last ``rows`` again; the inner loop and inference
carry one per layer.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lightning_ttt.config import ModelConfig


class KVCache(NamedTuple):
    k: Tensor  # [B, Hkv, rows, hd]
    v: Tensor  # [B, Hkv, rows, hd]

    @property
    def rows(self) -> int:
        return self.k.shape[2]

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, KVCache]:
        """Keys and values of ``[cache ; chunk]`` ([B, Hkv, rows + C, hd] each) and the cache after the chunk."""
        keys, values = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        return keys, values, KVCache(keys[:, :, -self.rows:], values[:, :, -self.rows:])

    def detach(self) -> KVCache:
        return KVCache(self.k.detach(), self.v.detach())


def empty_caches(cfg: ModelConfig, layers: int, batch: int, rows: int, dtype: torch.dtype,
                 device: torch.device | str) -> list[KVCache]:
    """``layers`` zero caches of ``rows`` positions for a batch of ``batch`` sequences."""
    shape = (batch, cfg.kv_heads, rows, cfg.head_dim)  # key/value heads only (grouped-query attention)
    return [KVCache(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(layers)]
