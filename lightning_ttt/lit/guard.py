"""The non-finite guard: a diverging run stops (or skips the batch) at the first NaN/Inf, and never
writes a checkpoint with non-finite weights."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.distributed.tensor import DTensor

from lightning_ttt.model.weights import first_non_finite

NonFinitePolicy = Literal["stop", "skip"]


class NonFiniteError(RuntimeError):
    """Training met a non-finite value; ``ttt fit`` prints it as one line and exits 1."""


def _bad_value(value: Tensor) -> str | None:
    """The first non-finite entry of ``value`` as text (``nan``, ``inf``), or None when all are finite."""
    bad = value.detach()[~torch.isfinite(value.detach())]
    return str(bad.flatten()[0].item()) if bad.numel() else None


def first_bad(quantities: dict[str, Tensor | dict[str, Tensor]]) -> str | None:
    """``"<quantity> is nan"`` for the first quantity (in order) holding a non-finite value, else None."""
    for name, value in quantities.items():
        for tensor in value.values() if isinstance(value, dict) else [value]:
            bad = _bad_value(tensor)
            if bad is not None:
                return f"{name} is {bad}"
    return None


def outer_grad_norm(module: L.LightningModule) -> Tensor:
    """L2 norm of all parameter gradients together (0 when there are none); sharded (FSDP2) gradients
    contribute their whole norm (an all-reduce per parameter, on every rank alike)."""
    norms = [_whole(torch.linalg.vector_norm(p.grad.detach(), dtype=torch.float32)) for p in module.parameters()
             if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


def _whole(value: Tensor) -> Tensor:
    """A DTensor's value as one plain tensor (its partial norms reduced); a plain tensor as it is."""
    return value.full_tensor() if isinstance(value, DTensor) else value


class NonFiniteGuard(L.Callback):
    """Watches, every training step, the inner gradient norms, the final fast weights and the outer loss
    (``module.step_quantities``, set by ``training_step``) and then the outer gradient norm.

    ``stop``: the first non-finite value raises ``NonFiniteError`` naming the step and the quantity,
    before the optimizer step, so the weights and every checkpoint stay finite. ``skip``: the batch's
    gradients are dropped (no optimizer update) and ``train/skipped_batches`` counts such batches.
    Under fp16 loss scaling the scaler owns overflowing gradients, so the outer gradient is not judged.
    In either mode a checkpoint whose weights are non-finite is refused with ``NonFiniteError``.
    The decision is taken on all ranks together, so distributed runs stop or skip in step.
    """

    def __init__(self, policy: NonFinitePolicy = "stop") -> None:
        if policy not in ("stop", "skip"):
            raise ValueError(f"model.nonfinite={policy!r}: expected stop or skip")
        self.policy = policy
        self.skipped = 0
        self._problem: str | None = None  # the first non-finite value of the step being accumulated

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        if self._problem is None:  # gradient accumulation: keep the first micro-batch's problem
            self._problem = first_bad({**getattr(pl_module, "step_quantities", {}), "outer loss": loss})

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        problem, self._problem = self._problem, None
        if problem is None and getattr(trainer.precision_plugin, "scaler", None) is None:
            problem = first_bad({"outer gradient norm": outer_grad_norm(pl_module)})
        if trainer.strategy.reduce_boolean_decision(problem is None, all=True):
            return
        where = f"step {trainer.global_step}: {problem or 'a non-finite value on another rank'}"
        if self.policy == "stop":
            raise NonFiniteError(f"{where}; training stopped (model.nonfinite=stop) before updating the "
                                 "weights, so every checkpoint written holds finite ones")
        for param in pl_module.parameters():  # no gradient, no update: AdamW skips the batch
            param.grad = None
        self.skipped += 1
        rank_zero_warn(f"{where}; batch skipped (model.nonfinite=skip, {self.skipped} so far)")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.policy == "skip":
            pl_module.log("train/skipped_batches", float(self.skipped))

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        bad = first_non_finite(checkpoint.get("state_dict", {}))
        if bad is not None:
            raise NonFiniteError(f"step {trainer.global_step}: weight {bad} is non-finite; checkpoint not written")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
