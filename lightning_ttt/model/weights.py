"""Loading a state dict into a model with one-line errors instead of PyTorch's key lists."""

from __future__ import annotations

import torch
from torch import nn


def state_mismatch(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """Keys missing from ``state``, keys it has in excess, and shared keys whose shapes differ (each sorted)."""
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in expected if k in state and state[k].shape != expected[k].shape)
    return missing, unexpected, wrong


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str, assign: bool = False) -> None:
    """Copy ``state`` into ``model``; keys and shapes must match exactly (``source`` names it in the error).

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
    model.load_state_dict(state, assign=assign)
