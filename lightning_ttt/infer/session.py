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


FA_PIECE = 2048  # prompt tokens per chunk for full attention (no TTT step bounds it; larger chunks, fewer calls)


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
    def _prefix(self, ids: Tensor) -> Tensor:
        """Embedding + blocks without fast weights on one piece [B, n] -> [B, n, D], advancing their caches."""
        h = self.model.embed(ids)
        for i, block in enumerate(self.model.blocks[: self.cfg.prefix_len]):
            h, self.prefix_caches[i] = block.forward_chunk(h, self.prefix_caches[i], self.pos, self.window,
                                                           self.kernel, None)
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
        unless ``keep_logits``). Pieces are at most b tokens (``FA_PIECE`` for fa), so prefill memory is
        O(b + window) for swa and e2e."""
        if ids.dim() != 2 or ids.shape[0] != self.batch:
            raise ValueError(f"expected token ids of shape [{self.batch}, t], got {list(ids.shape)}")
        if self.window is None and self.pos + ids.shape[1] > self.rows:
            raise ValueError(f"full attention cache holds {self.rows} tokens; {self.pos + ids.shape[1]} requested")
        ids = ids.to(self.device)
        b, total, i, kept = self.cfg.mini_batch, ids.shape[1], 0, []
        most = b if self.ttt or self.window is not None else FA_PIECE  # tokens per chunk
        while i < total:
            if self.ttt and self.pending == b:
                self._flush(ids[:, i:i + 1])
            n = min(most - self.pending, total - i)
            piece = ids[:, i:i + n]  # [B, n]
            h = self._prefix(piece)
            if self.ttt and self.pending == 0 and n == b and i + n < total:  # targets known: one pass with grad
                logits = self._ttt_step(h, ids[:, i + 1:i + n + 1], self.pos)
            elif self.ttt:
                with torch.no_grad():
                    out, self.live_caches = self.model.suffix_chunk(h, self.fast, self.live_caches, self.pos)
                    logits = self.model.logits(out)
                self.pending_h.append(h)
                self.pending_ids.append(piece)
            else:
                with torch.no_grad():
                    logits = self.model.logits(h if keep_logits else h[:, -1:])
            self.pos += n
            i += n
            kept.append(logits if keep_logits else logits[:, -1:])
        return torch.cat(kept, dim=1) if keep_logits else kept[-1]

