"""``ttt verify-reference``: check our model against numbers from the authors' JAX implementation.

Runs every mode of a fixture (``meta``, ``pretrain_swa_prime``, ``pretrain_swa``, ``pretrain_fa``
in the shipped one), compares losses, chunk losses, per-token NLL, logits, every gradient and —
for meta — inner gradient norms and fast weights after each step, with the fixture README's
tolerances, and returns one JSON-serialisable report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from lightning_ttt.model.transformer import Transformer
from lightning_ttt.tools.reference import Fixture, ReferenceMode, to_fixture_layout
from lightning_ttt.ttt.objective import lm_loss


@dataclass
class Tolerance:
    """``max|ours - ref| <= rel * scale + abs_``; ``scale`` is max|ref| or elementwise |ref|."""

    rel: float
    abs_: float = 0.0
    elementwise: bool = False

    def check(self, ours: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
        ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
        if ours.shape != ref.shape:
            return {"passed": False, "error": f"shape {ours.shape} != reference {ref.shape}"}
        err = np.abs(ours - ref)
        if self.elementwise:
            bound = self.rel * np.abs(ref) + self.abs_
            passed = bool(np.all(err <= bound))
            return {"passed": passed, "max_abs_err": float(err.max(initial=0.0)),
                    "worst_ratio": float((err / bound).max(initial=0.0))}
        bound = self.rel * float(np.abs(ref).max(initial=0.0)) + self.abs_
        return {"passed": bool(err.max(initial=0.0) <= bound), "max_abs_err": float(err.max(initial=0.0)),
                "tolerance": bound}


def tolerances(reference_precision: str) -> dict[str, Tolerance]:
    """The fixture README's recommended tolerances per kind of array."""
    if reference_precision == "f64":
        t = Tolerance(rel=1e-10)
        return {"value": t, "norm": Tolerance(rel=1e-10, elementwise=True), "tensor": t}
    return {"value": Tolerance(rel=0.0, abs_=1e-5), "norm": Tolerance(rel=1e-5, abs_=1e-6, elementwise=True),
            "tensor": Tolerance(rel=2e-5)}


def _kind(key: str) -> str:
    if key.startswith(("grad.", "inner_params", "prefix_output")):
        return "tensor"
    if key.startswith("inner_grad_norm"):
        return "norm"
    return "value"


def compute_mode(fixture: Fixture, mode: ReferenceMode, dtype: torch.dtype) -> dict[str, np.ndarray]:
    """Everything the fixture records for one mode, computed by our implementation."""
    model = Transformer(mode.config).to(dtype)
    fixture.load_into(model)
    ids, targets, mask = fixture.batch()
    out = lm_loss(model, ids, targets, mask, ttt=mode.meta, update=mode.update_fn(), create_graph=True,
                  keep_logits=True, keep_history=mode.meta)
    out.loss.backward()
    result: dict[str, np.ndarray] = {
        "loss": out.loss.detach().numpy(), "per_seq_loss": out.chunk_loss.mean(1).detach().numpy(),
        "chunk_loss": out.chunk_loss.detach().numpy(), "token_nll": out.token_nll.detach().numpy(),
        "logits": out.logits.detach().numpy(),
    }
    for name, param in model.named_parameters():
        result[f"grad.{name.removesuffix('.weight')}"] = to_fixture_layout(name.removesuffix(".weight"), param.grad)
    if mode.meta:
        inner = out.inner
        result["logits_pre_update"] = result["logits"]
        result["first_chunk_logits"] = result["logits"][:, : mode.config.loss_chunk(ids.shape[1])]
        with torch.no_grad():
            result["prefix_output"] = model.prefix(ids).numpy()
        result["inner_grad_norm"] = inner.grad_norm.detach().numpy()
        result["inner_grad_norm_first_step"] = result["inner_grad_norm"][:, 0]
        for name in inner.fast:
            steps = torch.stack([h[name] for h in inner.history], dim=1)  # [B, n_chunks, out, in]
            result[f"inner_params_after_step.{name}"] = to_fixture_layout(name, steps)
            result[f"inner_params_final.{name}"] = to_fixture_layout(name, inner.fast[name])
        result["ilr_multiplier"] = np.asarray(mode.ilr_multiplier)
        result["effective_inner_lr"] = np.asarray(mode.inner_lr)
    return result


def verify(fixture_path: str | Path, dtype: str = "float32", against: str = "auto",
           modes: list[str] | None = None) -> dict[str, Any]:
    """Compare every recorded array of every mode; the report's ``passed`` is the overall verdict."""
    torch_dtype = {"float32": torch.float32, "float64": torch.float64}.get(dtype)
    if torch_dtype is None:
        raise ValueError(f"--dtype {dtype!r} is not supported; expected float32 or float64")
    if against == "auto":
        against = "f64" if dtype == "float64" else "f32"
    if against not in ("f32", "f64"):
        raise ValueError(f"--against {against!r} is not supported; expected auto, f32 or f64")
    fixture = Fixture(fixture_path)
    tol = tolerances(against)
    prefix = "f64." if against == "f64" else ""
    all_modes = fixture.modes()
    unknown = sorted(set(modes or []) - set(all_modes))
    if unknown:
        raise ValueError(f"unknown mode(s) {', '.join(unknown)}; the fixture has {', '.join(all_modes)}")
    report: dict[str, Any] = {"fixture": str(fixture.path), "dtype": dtype, "reference": against, "modes": {}}
    for name in modes or list(all_modes):
        ours = compute_mode(fixture, all_modes[name], torch_dtype)
        checks = {}
        for key, value in ours.items():
            ref_key = f"{prefix}{name}.{key}"
            if ref_key in fixture.arrays:
                checks[key] = tol[_kind(key)].check(value, fixture.arrays[ref_key])
        expected = {k[len(prefix) + len(name) + 1:] for k in fixture.arrays if k.startswith(f"{prefix}{name}.")}
        unchecked = sorted(expected - set(checks))
        failed = sorted(k for k, c in checks.items() if not c["passed"])
        report["modes"][name] = {"passed": not failed and not unchecked and "loss" in checks,
                                 "checked": len(checks), "failed": failed, "unchecked": unchecked,
                                 "loss": float(ours["loss"]), "checks": checks}
    report["passed"] = bool(report["modes"]) and all(m["passed"] for m in report["modes"].values())
    return report


def verify_reference(fixture: str, /, *, dtype: Literal["float32", "float64"] = "float32",
                     against: Literal["auto", "f32", "f64"] = "auto", modes: list[str] | None = None,
                     verbose: bool = False) -> int:
    """Check the model against numbers from the authors' JAX implementation; prints one JSON report.

    Exits 0 when every check passes, 1 otherwise.

    Args:
        fixture: the fixture's .npz file (its .json must sit beside it).
        dtype: precision of our computation.
        against: reference arrays: f64.* for float64, the float32 ones otherwise (auto).
        modes: a subset of the fixture's modes (default: all).
        verbose: include every check in the report, not only the failed ones.
    """
    report = verify(fixture, dtype, against, modes)
    if not verbose:
        for mode in report["modes"].values():
            mode["checks"] = {k: v for k, v in mode["checks"].items() if not v["passed"]}
    print(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1
