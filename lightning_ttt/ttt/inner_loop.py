"""The TTT-E2E inner loop: one SGD step on the prime MLPs per mini-batch of b tokens.

For every chunk c the suffix blocks run with the current fast weights Φ_c and the carried window
KV caches; the chunk's masked mean NLL is the loss reported for those tokens (computed *before*
the update); its gradient w.r.t. Φ_c, clipped, gives Φ_{c+1}. With ``create_graph=True`` the
whole loop stays differentiable, so the outer loss (mean of chunk losses) meta-learns Φ_0 and
every other weight through the inner steps. With ``create_graph=False`` (evaluation and
inference) each step is first order and nothing but the fast weights and caches is carried.

``chunk_step`` is the one implementation of that step: training and evaluation call it through
``run_inner_loop``, inference (``lightning_ttt.infer.session``) calls it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_ttt.model.cache import KVCache, empty_caches
from lightning_ttt.model.transformer import FastWeights, Transformer, masked_mean, token_nll
from lightning_ttt.ttt.schedule import run_chunks, schedule_name
from lightning_ttt.ttt.update import UpdateFn


@dataclass
class InnerLoopOutput:
    chunk_loss: Tensor  # [B, n_chunks] masked mean NLL of each chunk, before its update
    token_nll: Tensor  # [B, T] unmasked NLL of every target
    grad_norm: Tensor  # [B, n_chunks] inner gradient norm before clipping
    fast: FastWeights  # fast weights after the last step
    logits: Tensor | None = None  # [B, T, V] pre-update logits, when requested
    history: list[FastWeights] = field(default_factory=list)  # fast weights after each step, when requested

    @property
    def loss(self) -> Tensor:
        """The meta objective: mean over chunks, then over sequences."""
        return self.chunk_loss.mean()


class ChunkStep(NamedTuple):
    loss: Tensor  # [B] masked mean NLL of the chunk with Φ_c
    token_nll: Tensor  # [B, C] unmasked
    grad_norm: Tensor  # [B] inner gradient norm before clipping
    logits: Tensor | None  # [B, C, V] with Φ_c (None unless keep_logits)
    fast: FastWeights  # Φ_{c+1}
    caches: list[KVCache]  # suffix caches after the chunk


def initial_fast_weights(model: Transformer, batch: int, differentiable: bool) -> FastWeights:
    """Φ_0 for each sequence, [B, out, in]: views of the outer weights (kept in the graph when
    ``differentiable``, else detached leaves that only collect inner gradients)."""
    fast = {}
    for name, w in model.fast_weights().items():
        w = w if differentiable else w.detach()
        fast[name] = w.unsqueeze(0).expand(batch, *w.shape)
        if not differentiable:
            fast[name].requires_grad_(True)
    return fast


def chunk_step(model: Transformer, update: UpdateFn, fast: FastWeights, caches: list[KVCache], h: Tensor,
               targets: Tensor, mask: Tensor, start: int, create_graph: bool, keep_logits: bool = True) -> ChunkStep:
    """One inner step on the chunk starting at absolute position ``start``: the suffix blocks on its prefix
    output h [B, C, D] with Φ_c and the caches, its loss masked by ``mask`` [B, C] (as in training), the
    gradient w.r.t. Φ_c, then ``update`` (clip and SGD) to Φ_{c+1}.

    Pure: returns everything it changes. With ``create_graph=False`` the results are detached (the new
    fast weights are fresh leaves), so nothing but values is carried to the next chunk. Without
    ``keep_logits`` the loss is taken slice by slice (``Transformer.nll``) and no [B, C, V] logits are kept.
    """
    with torch.enable_grad():  # evaluation may run under no_grad: the inner gradient is still taken
        out, caches = model.suffix_chunk(h, fast, caches, start, create_graph)
        logits = model.logits(out) if keep_logits else None  # [B, C, V]
        nll = token_nll(logits, targets) if keep_logits else model.nll(out, targets)  # [B, C]
        loss = masked_mean(nll, mask)  # [B]
        names = list(fast)
        grads = torch.autograd.grad(loss.sum(), [fast[n] for n in names], create_graph=create_graph)
        new_fast, norm = update(fast, dict(zip(names, grads)))
    if create_graph:
        return ChunkStep(loss, nll, norm, logits, new_fast, caches)
    return ChunkStep(loss.detach(), nll.detach(), norm.detach(), None if logits is None else logits.detach(),
                     {n: w.detach().requires_grad_(True) for n, w in new_fast.items()}, [c.detach() for c in caches])


def run_inner_loop(model: Transformer, prefix_out: Tensor, targets: Tensor, loss_mask: Tensor, update: UpdateFn, *,
                   create_graph: bool, fast: FastWeights | None = None, checkpoint_chunks: str | bool = "none",
                   keep_logits: bool = False, keep_history: bool = False) -> InnerLoopOutput:
    """Run the suffix blocks chunk by chunk over ``prefix_out`` [B, T, D] with test-time training.

    ``targets`` and ``loss_mask`` are [B, T]. ``update`` is the inner optimiser step
    (``lightning_ttt.ttt.make_update``, or the LightningModule's hook). ``checkpoint_chunks`` is the
    checkpointing-through-time schedule of meta-learning (``lightning_ttt.ttt.schedule``: none, each,
    sqrt or log; true/false mean each/none): which chunk-boundary states (fast weights and caches) the
    backward pass keeps and which chunks it recomputes. It never changes the numbers.
    """
    cfg = model.cfg
    if torch.is_inference_mode_enabled():
        raise RuntimeError("test-time training takes gradient steps and cannot run under torch.inference_mode(); "
                           "use torch.no_grad() or Trainer(inference_mode=False)")
    if create_graph and not all(w.requires_grad for w in model.fast_weights().values()):
        raise RuntimeError("meta-learning (create_graph=True) needs the prime MLP weights to require grad")
    batch, seq_len, _ = prefix_out.shape
    chunk = cfg.loss_chunk(seq_len)
    cfg.check_seq_len(seq_len)
    if fast is None:
        fast = initial_fast_weights(model, batch, differentiable=create_graph)
    caches = empty_caches(cfg, cfg.suffix_len, batch, cfg.window, prefix_out.dtype, prefix_out.device)
    # split, not slicing: one backward node for all chunks instead of a zero-filled [B, T, D] per chunk
    pieces = list(zip(targets.split(chunk, dim=1), loss_mask.split(chunk, dim=1)))  # [B, C] each
    layout = StateLayout.of(fast, caches)
    recompute = create_graph and schedule_name(checkpoint_chunks) != "none"
    history: list[FastWeights] = []
    forward_pass = True  # the backward pass replays steps; those must not be recorded

    def step(index: int, state: tuple[Tensor, ...], inputs: tuple[Tensor, ...]):
        (h,), (y, m) = inputs, pieces[index]  # h: [B, C, D]
        out = chunk_step(model, update, *layout.unpack(state), h, y, m, index * chunk, create_graph,
                         keep_logits)
        if keep_history and forward_pass:
            history.append({n: w.detach() for n, w in out.fast.items()} if recompute else out.fast)
        return (out.loss, out.token_nll, out.grad_norm, out.logits), layout.pack(out.fast,
                                                                                                         out.caches)

    reports, state = run_chunks(step, [(h,) for h in prefix_out.split(chunk, dim=1)], layout.pack(fast, caches),
                                checkpoint_chunks, params=list(model.parameters()), recompute=create_graph)
    forward_pass = False
    fast, _ = layout.unpack(state)
    steps = [ChunkStep(*r, fast={}, caches=[]) for r in reports]
    return InnerLoopOutput(
        chunk_loss=torch.stack([s.loss for s in steps], dim=1), token_nll=torch.cat([s.token_nll for s in steps], dim=1),
        grad_norm=torch.stack([s.grad_norm for s in steps], dim=1), fast=fast,
        logits=torch.cat([s.logits for s in steps], dim=1) if keep_logits else None, history=history)


@dataclass(frozen=True)
class StateLayout:
    """How the state between chunks (fast weights + caches) becomes a flat tuple of tensors and back:
    checkpoints save only tensors passed to them one by one."""

    names: tuple[str, ...]  # fast-weight names, in order
    caches: tuple[tuple[type, tuple], ...]  # per layer: its NamedTuple type and fields, None where a tensor goes

    @classmethod
    def of(cls, fast: FastWeights, caches: list) -> StateLayout:
        fields = lambda c: tuple(None if isinstance(x, Tensor) else x for x in c)  # keep flags such as ring
        return cls(tuple(fast), tuple((type(c), fields(c)) for c in caches))

    def pack(self, fast: FastWeights, caches: list) -> tuple[Tensor, ...]:
        return (*(fast[n] for n in self.names), *(t for c in caches for t in c if isinstance(t, Tensor)))

    def unpack(self, state: tuple[Tensor, ...]) -> tuple[FastWeights, list]:
        fast = dict(zip(self.names, state))
        rest, caches = iter(state[len(self.names):]), []
        for kind, fields in self.caches:
            caches.append(kind(*(next(rest) if x is None else x for x in fields)))
        return fast, caches
