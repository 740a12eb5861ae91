"""Streaming forward with caches: prefill and token-by-token decoding for fa, swa and e2e.

Every block runs chunk by chunk through ``Block.forward_chunk`` with its own KV cache of rotated
keys, so memory is constant in the context length for swa and e2e (caches of exactly ``window``
rows); fa gets a cache of ``capacity`` rows (whole-sequence causal attention). The caches of blocks
without fast weights are preallocated ring buffers written in place (no gradients there); the TTT
blocks of e2e carry the training's ordered caches, since their step takes gradients.

For e2e, the suffix blocks take exactly the evaluation's first-order TTT steps: the same
``lightning_ttt.ttt.chunk_step``, with the loss masked as in training (``target_mask``: BOS targets
are not scored). Mini-batch c covers positions [c·b, (c+1)·b); its loss needs the target of its
last token, i.e. the token at (c+1)·b. So a mini-batch stays *pending* until that next token
arrives (from the prompt or from decoding); then it is recomputed through the suffix from the
caches saved at its start with the fast weights that were current, one clipped SGD step is taken,
and the next token runs with the new fast weights. This gives the same logits as the evaluation
forward on the concatenated sequence.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_ttt.data.packing import target_mask
from lightning_ttt.model.cache import empty_caches
from lightning_ttt.model.transformer import Transformer
from lightning_ttt.ttt.inner_loop import chunk_step, initial_fast_weights
from lightning_ttt.ttt.update import UpdateFn, make_update


PREFILL_PIECE = 2048  # most prompt tokens the blocks without fast weights read at once (memory O(piece + window))


class InferenceSession:
    """Caches and fast weights of a batch of B sequences that are read left to right.

    Args:
        model: the Transformer (any dtype/device; its weights are not modified).
        batch: number of sequences B (all advance together, so prompts share one length).
        capacity: fa only — the most tokens the session will hold (prompt + generated).
        update: the inner optimiser step; defaults to ``make_update(model.cfg)`` (evaluation's).
    """

    def __init__(self, model: Transformer, batch: int, capacity: int | None = None,
                 update: UpdateFn | None = None) -> None:
        cfg = model.cfg
        self.window = cfg.attention_window
        if self.window is None and (capacity is None or capacity < 1):
            raise ValueError("full attention needs capacity= (prompt length + new tokens) for its KV cache")
        self.model, self.cfg, self.batch = model, cfg, batch
        self.rows = capacity if self.window is None else self.window  # cache rows = attention span
        self.kernel = model.chunk_kernel()
        self.update = update or make_update(cfg)
        weight = model.embed.weight
        self.dtype, self.device = weight.dtype, weight.device
        self.pos = 0  # tokens read so far
        self.prefix_caches = empty_caches(cfg, cfg.prefix_len, batch, self.rows, self.dtype, self.device, ring=True)
        self.ttt = cfg.method == "e2e"
        self.grad_norms: list[Tensor] = []  # [B] per TTT step taken, before clipping
        if self.ttt:
            self.fast = initial_fast_weights(model, batch, differentiable=False)  # {[B, out, in]}
            # suffix caches at the start of the pending mini-batch, and after the last token read
            self.anchor_caches = empty_caches(cfg, cfg.suffix_len, batch, self.rows, self.dtype, self.device)
            self.live_caches = list(self.anchor_caches)
            self.anchor = 0  # start of the pending mini-batch
            self.pending_h: list[Tensor] = []  # prefix outputs of pending tokens, [B, n, D] each
            self.pending_ids: list[Tensor] = []  # their ids, [B, n] each

    @property
    def pending(self) -> int:
        """Tokens read since the last TTT step (e2e); 0 for fa and swa."""
        return self.pos - self.anchor if self.ttt else 0

    # ------------------------------------------------------------------ reading tokens
    @torch.no_grad()
    def _prefix(self, ids: Tensor, start: int) -> Tensor:
        """Embedding + blocks without fast weights on one piece [B, n] at positions start.. -> [B, n, D],
        advancing their caches."""
        h = self.model.embed(ids)
        for i, block in enumerate(self.model.blocks[: self.cfg.prefix_len]):
            h, self.prefix_caches[i] = block.forward_chunk(h, self.prefix_caches[i], start, self.window, self.kernel,
                                                           None)
        return h

    def _ttt_step(self, h: Tensor, targets: Tensor, start: int) -> Tensor:
        """The evaluation's TTT step on a full mini-batch h [B, b, D] from the anchor caches with Φ_c;
        returns the mini-batch's logits [B, b, V] (with Φ_c)."""
        step = chunk_step(self.model, self.update, self.fast, self.anchor_caches, h, targets,
                          target_mask(targets, self.cfg.bos_id), start, create_graph=False)
        self.fast, self.anchor_caches = step.fast, step.caches
        self.live_caches = list(self.anchor_caches)
        self.anchor = start + h.shape[1]
        self.grad_norms.append(step.grad_norm)
        return step.logits

    def _flush(self, next_ids: Tensor) -> None:
        """The pending mini-batch is full and its last target ``next_ids`` [B, 1] is known: take the TTT step."""
        inputs = torch.cat(self.pending_ids, dim=1)  # [B, b]
        h = torch.cat(self.pending_h, dim=1)  # [B, b, D]
        self.pending_h, self.pending_ids = [], []
        self._ttt_step(h, torch.cat([inputs[:, 1:], next_ids], dim=1), self.anchor)

    def feed(self, ids: Tensor, keep_logits: bool = False) -> Tensor:
        """Read tokens ids [B, t]; returns the logits [B, t, V] (only the last position, [B, 1, V],
        unless ``keep_logits``). The blocks without fast weights read pieces of ``piece_len()`` tokens;
        e2e's suffix then steps through each piece mini-batch by mini-batch, so prefill memory is
        O(piece + window) for swa and e2e."""
        if ids.dim() != 2 or ids.shape[0] != self.batch:
            raise ValueError(f"expected token ids of shape [{self.batch}, t], got {list(ids.shape)}")
        if self.window is None and self.pos + ids.shape[1] > self.rows:
            raise ValueError(f"full attention cache holds {self.rows} tokens; {self.pos + ids.shape[1]} requested")
        ids = ids.to(self.device)
        kept, size = [], self.piece_len()
        for lo in range(0, ids.shape[1], size):
            piece = ids[:, lo:lo + size]  # [B, n]
            h = self._prefix(piece, self.pos)  # [B, n, D]
            if self.ttt:
                kept += self._suffix(h, ids, lo, keep_logits)
                continue
            with torch.no_grad():
                logits = self.model.logits(h if keep_logits else h[:, -1:])
            self.pos += piece.shape[1]
            kept.append(logits)
        return torch.cat(kept, dim=1) if keep_logits else kept[-1]

    def piece_len(self) -> int:
        """Tokens the blocks without fast weights read at once: ``PREFILL_PIECE`` for full attention; with a
        window, half of it (at least b, at most ``PREFILL_PIECE``), since a piece attends to [window ; piece]
        keys and a longer one wastes more of its scores (debug e2e at 16K: 0.126 s/1K with pieces of 128,
        0.107 with 512, 0.122 with 2048; swa 0.129, 0.066, 0.083)."""
        if self.window is None:
            return PREFILL_PIECE
        return min(PREFILL_PIECE, max(self.cfg.mini_batch, self.window // 2))

    def _suffix(self, h: Tensor, ids: Tensor, lo: int, keep_logits: bool) -> list[Tensor]:
        """e2e: the suffix blocks over the prefix output h [B, n, D] of ids[:, lo:lo+n], mini-batch by
        mini-batch (a TTT step whenever a mini-batch and its last target are known); returns the logits."""
        b, total, stop, i, kept = self.cfg.mini_batch, ids.shape[1], lo + h.shape[1], lo, []
        while i < stop:
            if self.pending == b:
                self._flush(ids[:, i:i + 1])
            n = min(b - self.pending, stop - i)
            part, h_part = ids[:, i:i + n], h[:, i - lo:i - lo + n]  # [B, n], [B, n, D]
            if self.pending == 0 and n == b and i + n < total:  # targets known: one pass with grad
                logits = self._ttt_step(h_part, ids[:, i + 1:i + n + 1], self.pos)
            else:
                with torch.no_grad():
                    out, self.live_caches = self.model.suffix_chunk(h_part, self.fast, self.live_caches, self.pos)
                    logits = self.model.logits(out)
                self.pending_h.append(h_part)
                self.pending_ids.append(part)
            self.pos += n
            i += n
            kept.append(logits if keep_logits else logits[:, -1:])
        return kept
