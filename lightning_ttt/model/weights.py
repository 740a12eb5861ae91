"""Loading a state dict into a model with one-line errors instead of PyTorch's key lists."""

from __future__ import annotations

import torch
from torch import nn


def state_mismatch(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """Keys missing from ``state``, keys it has in excess, and shared keys whose shapes differ (each sorted)."""
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in expected if k in state and state[k].shape != expected[k].shape)
    return missing, unexpected, wrong


def first_non_finite(state: dict[str, torch.Tensor]) -> str | None:
    """The first key of ``state`` whose floating-point tensor holds a NaN or an infinity, else None."""
    for key, tensor in state.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return key
    return None


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str, assign: bool = False) -> None:
    """Copy ``state`` into ``model``; keys and shapes must match exactly and every weight must be finite
    (``source`` names it in the error).

    ``assign`` makes the tensors of ``state`` the model's parameters instead of copying them (for a
    model built on the meta device: one copy of the weights in memory).
    """
    missing, unexpected, wrong = state_mismatch(model.state_dict(), state)
    if missing or unexpected or wrong:
        detail = "; ".join(part for part in (
            f"missing {', '.join(missing[:3])}" if missing else "",
            f"unexpected {', '.join(unexpected[:3])}" if unexpected else "",
            f"shape mismatch in {', '.join(wrong[:3])}" if wrong else "") if part)
        cfg = getattr(model, "cfg", None)
        what = f" ({cfg.name}, method {cfg.method})" if cfg is not None else ""
        raise ValueError(f"{source} holds weights of another architecture than its config{what}: {detail}")
    bad = first_non_finite(state)
    if bad is not None:
        raise ValueError(f"{source} holds non-finite weights ({bad} has NaN or Inf): the run that wrote it diverged")
    model.load_state_dict(state, assign=assign)
