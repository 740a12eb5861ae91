"""Checkpointing through time: which inner-loop states meta-learning keeps for its backward pass.

Differentiating through n = T/b inner steps needs, for every step, the state it started from (fast
weights and KV caches) and that step's activations. Plain autodiff keeps all of it. A schedule
instead cuts the n chunks into nested *segments*. Each segment is one autograd node: its forward
pass runs the chunks, keeps only the state the segment starts from and drops every chunk's graph as
soon as the chunk has run; its backward pass runs the segment again — its children as segments of
their own, a single chunk with its whole graph — and differentiates that (second order included:
the chunk step builds its inner gradient with ``create_graph`` in both passes).

Why not ``torch.utils.checkpoint``: the chunk step takes a gradient *inside* the checkpointed
function, so non-reentrant checkpoint recomputes the chunk in the forward pass already, and with
nested checkpoints every enclosing one as well (measured: 90 chunk steps per chunk for bisection
over 32 chunks). Here each segment is replayed exactly once.

Schedules (``model.config.checkpoint_chunks``), n chunks, s = ceil(sqrt n); "states" are chunk-boundary
states held for the backward pass (``peak_states`` counts them; a test counts them in autograd):

* ``none`` — no recomputation; every chunk's state and activations are kept (n states).
* ``each`` — one segment per chunk: n states and one chunk's activations; each chunk runs twice.
* ``sqrt`` — s segments of balanced length, each made of one-chunk segments: s states through the
  forward pass, at most about 2·sqrt(n) in the backward; each chunk runs 3 times.
* ``log`` — recursive bisection down to single chunks (revolve-like, recomputation depth log2 n):
  2 states through the forward pass, ceil(log2 n) + 1 in the backward; each chunk runs about
  log2(n) + 1 times (``chunk_passes``).

Parameter gradients of all replays under one outermost segment are summed in one buffer, so the
nesting depth does not multiply them; the gradient of the output state of every segment being
replayed is held too (one state-sized tensor per nesting level). Autocast settings of the forward
pass are reused in the replays. The numbers computed are those of the plain loop (float64 tests).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_ttt.config import CHECKPOINT_SCHEDULES, CheckpointSchedule

# what one chunk reports (its loss, ...): tensors, or None for something not kept
Report = tuple[Tensor | None, ...]
# (chunk index, state as a flat tuple of tensors, the chunk's other inputs) -> (its report, the next state)
StepFn = Callable[[int, tuple[Tensor, ...], tuple[Tensor, ...]], tuple[Report, tuple[Tensor, ...]]]


@dataclass(frozen=True)
class Segment:
    """Chunks ``start`` .. ``stop - 1``; a segment of one chunk has no children."""

    start: int
    stop: int
    children: tuple[Segment, ...] = ()

    def __len__(self) -> int:
        return self.stop - self.start


def schedule_name(value: str | bool) -> CheckpointSchedule:
    """The schedule of a ``checkpoint_chunks`` value: a schedule name, or a bool (true: each, false: none)."""
    if isinstance(value, bool):
        return "each" if value else "none"
    if value not in CHECKPOINT_SCHEDULES:
        raise ValueError(f"checkpoint_chunks={value!r} is unknown; expected one of {', '.join(CHECKPOINT_SCHEDULES)}")
    return value


def plan(n_chunks: int, schedule: str | bool) -> tuple[Segment, ...]:
    """The outermost segments of ``n_chunks`` chunks under ``schedule``; each one, and recursively each of
    its children, is one checkpointed region. ``none`` gives single chunks that are not checkpointed."""
    schedule = schedule_name(schedule)
    if n_chunks < 1:
        raise ValueError(f"the inner loop needs at least one chunk, got {n_chunks}")
    if schedule in ("none", "each"):
        return _singles(0, n_chunks)
    if schedule == "sqrt":
        count = math.isqrt(n_chunks - 1) + 1  # ceil(sqrt(n)) segments of balanced length
        bounds = [n_chunks * i // count for i in range(count + 1)]
        return tuple(_flat(a, b) for a, b in zip(bounds, bounds[1:]))
    root = _bisect(0, n_chunks)
    return root.children or (root,)


def _singles(start: int, stop: int) -> tuple[Segment, ...]:
    return tuple(Segment(i, i + 1) for i in range(start, stop))


def _flat(start: int, stop: int) -> Segment:
    return Segment(start, stop, _singles(start, stop) if stop - start > 1 else ())


def _bisect(start: int, stop: int) -> Segment:
    if stop - start == 1:
        return Segment(start, stop)
    mid = start + (stop - start + 1) // 2  # the longer half first: it is replayed while fewer states are held
    return Segment(start, stop, (_bisect(start, mid), _bisect(mid, stop)))


def peak_states(n_chunks: int, schedule: str | bool) -> int:
    """Chunk-boundary states (fast weights + caches) held at once in the backward pass: the inputs of the
    checkpoints alive together, the one being replayed included (the final state, which the loop returns,
    is not counted). ``none`` holds all n, and every chunk's activations with them. This is the number a
    memory planner multiplies by the size of one state."""
    return _peak(plan(n_chunks, schedule))


def forward_states(n_chunks: int, schedule: str | bool) -> int:
    """States held from the forward pass until the backward pass reaches them: one per outermost segment."""
    return len(plan(n_chunks, schedule))


def chunk_passes(n_chunks: int, schedule: str | bool) -> float:
    """Chunk steps run per chunk in one forward + backward pass: 1 in the forward pass, plus the replays.

    Every checkpointed segment is replayed once in the backward pass, so a chunk runs once more for
    each segment that holds it: ``each`` 2, ``sqrt`` 3, ``log`` about log2(n) + 1.
    """
    if schedule_name(schedule) == "none":
        return 1.0
    return 1 + _replayed(plan(n_chunks, schedule)) / n_chunks


def nesting_depth(n_chunks: int, schedule: str | bool) -> int:
    """Levels of checkpoints (0 for ``none``): while the innermost one replays, each level holds the gradient
    of its segment's output state, one state-sized tensor per level."""
    if schedule_name(schedule) == "none":
        return 0

    def depth(segments: Sequence[Segment]) -> int:
        return 1 + max((depth(seg.children) for seg in segments if seg.children), default=0)
    return depth(plan(n_chunks, schedule))


def _peak(segments: Sequence[Segment]) -> int:
    # the backward pass visits segments last to first while the inputs of the earlier ones are still held
    return max(i + (_peak(seg.children) if seg.children else 1) for i, seg in enumerate(segments))


def _replayed(segments: Sequence[Segment]) -> int:
    return sum(len(seg) + _replayed(seg.children) for seg in segments)


def run_chunks(step: StepFn, chunk_inputs: Sequence[tuple[Tensor, ...]], state: tuple[Tensor, ...],
               schedule: str | bool, params: Sequence[Tensor] = (), recompute: bool = True,
               ) -> tuple[list[Report], tuple[Tensor, ...]]:
    """Run ``step`` over the chunks from ``state``; returns every chunk's report and the last state.

    ``chunk_inputs[i]`` are the differentiable inputs of chunk i besides the state (its slice of the prefix
    output); ``params`` every other tensor the step differentiates into (the model's parameters). With
    ``recompute`` (meta-learning) the chunks are checkpointed as ``schedule`` plans; otherwise
    (first-order evaluation, or ``none``) they simply run in order.
    """
    if not recompute or schedule_name(schedule) == "none":
        reports = []
        for index, inputs in enumerate(chunk_inputs):
            report, state = step(index, state, inputs)
            reports.append(report)
        return reports, state
    runner = _Runner(step, tuple(p for p in params if p.requires_grad), _autocast_state(chunk_inputs[0]))
    reports = []
    for seg in plan(len(chunk_inputs), schedule):
        inputs = [t for index in range(seg.start, seg.stop) for t in chunk_inputs[index]]
        out, state = runner.apply(seg, state, inputs, runner.params, _ParamGrads())
        reports += out
    return reports, state


# ------------------------------------------------------------------ the segment checkpoint


class _ParamGrads(dict):
    """Gradients of the parameters summed over the replays below one outermost segment: one buffer,
    however deep the replay, instead of one per level of nesting."""

    def add(self, params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
        for p, g in zip(params, grads):
            if g is not None:
                if id(p) in self:
                    self[id(p)] += g
                else:
                    self[id(p)] = g


@dataclass
class _Runner:
    """What a segment needs to run its chunks again in the backward pass."""

    step: StepFn
    params: tuple[Tensor, ...]  # differentiated by one-chunk segments
    autocast: list[tuple[str, bool, Any]]

    def apply(self, seg: Segment, state: tuple[Tensor, ...], inputs: Sequence[Tensor], params: tuple[Tensor, ...],
              grads: _ParamGrads) -> tuple[list[Report], tuple[Tensor, ...]]:
        """Run ``seg`` as one checkpoint: its reports and the state after it. ``inputs`` are its chunks' inputs,
        in order; ``params`` are inputs of the checkpoint only for an outermost segment (a nested one adds its
        parameter gradients to ``grads``)."""
        call = _Call(self, seg, len(state), len(inputs), grads)
        flat = _SegmentFunction.apply(call, *state, *inputs, *params)
        return call.unflatten(flat)

    def forward(self, seg: Segment, state: tuple[Tensor, ...], inputs: Sequence[Tensor],
                ) -> tuple[list[Report], tuple[Tensor, ...]]:
        """The values of the segment's chunks: each chunk's graph is dropped as soon as it has run."""
        per_chunk, reports = len(inputs) // len(seg), []
        for k, index in enumerate(range(seg.start, seg.stop)):
            report, state = self.step(index, state, tuple(inputs[k * per_chunk:(k + 1) * per_chunk]))
            # rebinding both names frees the chunk's graph before the next chunk runs
            report, state = tuple(None if t is None else t.detach() for t in report), _detached(state)
            reports.append(report)
        return reports, state

    def replay(self, seg: Segment, state: tuple[Tensor, ...], inputs: Sequence[Tensor], grads: _ParamGrads,
               ) -> tuple[list[Report], tuple[Tensor, ...]]:
        """The segment's chunks with their graph: one chunk's whole graph, or its children as checkpoints."""
        per_chunk = len(inputs) // len(seg)
        if not seg.children:
            report, state = self.step(seg.start, state, tuple(inputs))
            return [report], state
        reports = []
        for child in seg.children:
            offset = (child.start - seg.start) * per_chunk
            out, state = self.apply(child, state, inputs[offset:offset + len(child) * per_chunk], (), grads)
            reports += out
        return reports, state


@dataclass
class _Call:
    """One segment checkpoint: the layout of its flat inputs and outputs."""

    runner: _Runner
    seg: Segment
    n_state: int
    n_inputs: int
    grads: _ParamGrads
    reports: list[tuple[bool, ...]] | None = None  # which report entries are tensors (not None), per chunk

    def flatten(self, reports: list[Report], state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self.reports = [tuple(t is not None for t in r) for r in reports]
        return (*(t for r in reports for t in r if t is not None), *state)

    def unflatten(self, flat: Sequence[Tensor]) -> tuple[list[Report], tuple[Tensor, ...]]:
        rest, reports = list(flat), []
        for present in self.reports or []:
            reports.append(tuple(rest.pop(0) if p else None for p in present))
        return reports, tuple(rest)


class _SegmentFunction(torch.autograd.Function):
    """A segment as one autograd node: the forward pass runs its chunks and keeps only its input state;
    the backward pass runs them again (its children as checkpoints of their own) and differentiates."""

    @staticmethod
    def forward(ctx, call: _Call, *tensors: Tensor) -> tuple[Tensor, ...]:
        ctx.call = call
        ctx.set_materialize_grads(False)
        state, inputs, params = _split(call, tensors)
        ctx.save_for_backward(*state, *inputs)
        ctx.params = params
        with torch.enable_grad():
            reports, state = call.runner.forward(call.seg, _detached(state), _detached(inputs))
        return tuple(t.detach() for t in call.flatten(reports, state))

    @staticmethod
    def backward(ctx, *out_grads: Tensor | None) -> tuple[Tensor | None, ...]:
        call: _Call = ctx.call
        saved = ctx.saved_tensors
        state, inputs = _detached(saved[:call.n_state]), _detached(saved[call.n_state:])
        outermost = bool(ctx.params)
        grads = _ParamGrads() if outermost else call.grads  # one sum per outermost segment
        with torch.enable_grad(), _autocast(call.runner.autocast):
            reports, out_state = call.runner.replay(call.seg, state, inputs, grads)
        pairs = [(o, g) for o, g in zip(call.flatten(reports, out_state), out_grads)
                 if g is not None and o.requires_grad]
        wrt = [t for t in (*state, *inputs) if t.requires_grad]
        # a one-chunk segment differentiates into the parameters itself; a longer one leaves that to its children
        params = () if call.seg.children else call.runner.params
        got = (torch.autograd.grad([o for o, _ in pairs], (*wrt, *params), [g for _, g in pairs], allow_unused=True)
               if pairs and (wrt or params) else (None,) * (len(wrt) + len(params)))
        grads.add(params, got[len(wrt):])
        by_id = {id(t): g for t, g in zip(wrt, got)}
        param_grads = tuple(grads.get(id(p)) for p in ctx.params)
        return (None, *(by_id.get(id(t)) for t in (*state, *inputs)), *param_grads)


def _split(call: _Call, tensors: Sequence[Tensor]) -> tuple[tuple[Tensor, ...], ...]:
    state, rest = tuple(tensors[:call.n_state]), tensors[call.n_state:]
    return state, tuple(rest[:call.n_inputs]), tuple(rest[call.n_inputs:])


def _detached(tensors: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """Leaves of a new graph with the same values (and the same need for gradients)."""
    return tuple(t.detach().requires_grad_(t.requires_grad) for t in tensors)


def _autocast_state(inputs: tuple[Tensor, ...]) -> list[tuple[str, bool, Any]]:
    """The autocast settings of the forward pass, which the replays in the backward pass must reuse."""
    kinds = dict.fromkeys(["cpu", *(t.device.type for t in inputs)])
    return [(kind, torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)) for kind in kinds]


def _autocast(settings: list[tuple[str, bool, Any]]) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    for kind, enabled, dtype in settings:
        stack.enter_context(torch.autocast(kind, dtype=dtype, enabled=enabled))
    return stack
