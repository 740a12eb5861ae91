"""The KV cache of chunked attention: one type, two ways of keeping its rows.

A cache holds the keys and values of one layer, [B, Hkv, rows, hd] each (Hkv = the key/value heads,
fewer than the query heads with grouped-query attention). Keys are stored *rotated*: RoPE is applied
once, with the key's absolute position, when it enters the cache, and queries are rotated with theirs,
so scores depend only on the distance (RoPE is relative) and cached keys are never touched again.

* ``ring=False`` (training, evaluation, the TTT blocks at inference): the last ``rows`` positions in
  order, zero-filled before position 0. ``update`` concatenates the chunk and keeps the last ``rows``
  again: a new cache, so gradients (and gradients of gradients) flow through it.
* ``ring=True`` (inference without gradients): a preallocated buffer written in place, position p in
  slot ``p % rows``. ``rows`` = window for sliding-window attention, the capacity for full attention
  (then it never wraps). Attention is indifferent to the order of its keys, so slots are never moved.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lightning_ttt.config import ModelConfig
from lightning_ttt.model.attention import as_bias, band_bias, window_mask


class ChunkKeys(NamedTuple):
    """What a chunk of C queries at positions start..start+C-1 attends to."""

    k: Tensor  # [B, Hkv, tk, hd] rotated keys
    v: Tensor  # [B, Hkv, tk, hd]
    mask: Tensor | None  # additive [C, tk] in the keys' dtype (0 allowed, -inf not); None: every key is visible,
    # or, for full attention with ``past`` set, every older key and the chunk's own causally (built only if needed)
    past: int | None  # keys [past:] are the chunk's own, in order, and every earlier key precedes the chunk;
    # None when a ring has wrapped (the chunk's keys sit among the older ones)


class KVCache(NamedTuple):
    k: Tensor  # [B, Hkv, rows, hd] keys after RoPE at their absolute positions
    v: Tensor  # [B, Hkv, rows, hd]
    ring: bool = False  # False: rows in position order, updated by concatenation; True: slots updated in place

    @property
    def rows(self) -> int:
        return self.k.shape[2]

    def update(self, k: Tensor, v: Tensor, start: int, window: int | None) -> tuple[ChunkKeys, KVCache]:
        """Add a chunk's rotated keys and values (k, v: [B, Hkv, C, hd], positions start..start+C-1).

        Returns the keys the chunk attends to (cache slots before position 0 dropped) and the cache
        after the chunk (``self``, changed in place, for a ring).
        """
        if self.ring:
            return self._write(k, v, start, window), self
        chunk, rows = k.shape[2], self.rows
        keys, values = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)  # [B, Hkv, rows + C, hd]
        lo = max(0, rows - start)  # rows that hold no position yet (before position 0)
        # keys hold positions start-rows+lo .. start+C-1; query i sits at key index rows-lo+i
        mask = band_bias(chunk, rows + chunk - lo, rows - lo, window, k.dtype, k.device)  # [C, rows + C - lo]
        seen = ChunkKeys(keys[:, :, lo:], values[:, :, lo:], mask, rows - lo)
        return seen, KVCache(keys[:, :, -rows:], values[:, :, -rows:]) if rows else self

    def _write(self, k: Tensor, v: Tensor, start: int, window: int | None) -> ChunkKeys:
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
            raise RuntimeError("a ring KV cache is written in place and keeps no gradients; use it under torch.no_grad()")
        chunk, rows = k.shape[2], self.rows
        stop = start + chunk
        if window is None and stop > rows:
            raise ValueError(f"the full-attention KV cache holds {rows} positions; position {stop - 1} was requested")
        needed = 0 if window is None else max(0, start - window + 1)  # the oldest position any query sees
        if stop - rows - 1 < needed:  # writing first evicts nothing a query needs: attend over the slots
            self._store(k, v, start)
            used = min(rows, stop)
            keys, values = self.k[:, :, :used], self.v[:, :, :used]
            oldest = max(0, stop - rows)
            if chunk == 1 and (window is None or oldest >= needed):
                return ChunkKeys(keys, values, None, used - 1 if stop <= rows else None)
            if window is None and stop <= rows:  # in position order: the causal mask is implied by ``past``
                return ChunkKeys(keys, values, None, used - chunk)
            slots = torch.arange(used, device=k.device)
            positions = slots + rows * torch.div(stop - 1 - slots, rows, rounding_mode="floor")  # [used] slot s: p % rows = s
            mask = window_mask(torch.arange(start, stop, device=k.device), positions, window)
            return ChunkKeys(keys, values, as_bias(mask, k.dtype), used - chunk if stop <= rows else None)
        # the chunk is wider than the slack: attend over [older keys in position order ; chunk], then keep the
        # chunk's newest keys; in order, the mask is the cached band of this shape
        used = min(rows, start)
        slots = torch.arange(start - used, start, device=k.device) % rows  # [used]: slots of positions start-used..
        keys, values = torch.cat([self.k[:, :, slots], k], dim=2), torch.cat([self.v[:, :, slots], v], dim=2)
        seen = ChunkKeys(keys, values, band_bias(chunk, used + chunk, used, window, k.dtype, k.device), used)
        keep = min(chunk, rows)
        self._store(k[:, :, -keep:], v[:, :, -keep:], stop - keep)
        return seen

    def _store(self, k: Tensor, v: Tensor, start: int) -> None:
        """Write positions start..start+C-1 into their slots (C <= rows)."""
        chunk, rows = k.shape[2], self.rows
        first = start % rows
        if first + chunk <= rows:  # one contiguous run of slots
            self.k[:, :, first:first + chunk] = k
            self.v[:, :, first:first + chunk] = v
        else:
            slots = torch.arange(start, start + chunk, device=k.device) % rows
            self.k.index_copy_(2, slots, k)
            self.v.index_copy_(2, slots, v)

    def detach(self) -> KVCache:
        return self if self.ring else KVCache(self.k.detach(), self.v.detach())

    def clone(self) -> KVCache:
        return KVCache(self.k.clone(), self.v.clone(), self.ring)


def empty_caches(cfg: ModelConfig, layers: int, batch: int, rows: int, dtype: torch.dtype,
                 device: torch.device | str, ring: bool = False) -> list[KVCache]:
    """``layers`` zero caches of ``rows`` positions for a batch of ``batch`` sequences (``ring``: written in place)."""
    shape = (batch, cfg.kv_heads, rows, cfg.head_dim)  # key/value heads only (grouped-query attention)
    return [KVCache(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device),
                    ring) for _ in range(layers)]
