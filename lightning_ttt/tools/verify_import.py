"""``ttt verify-import DIR REFERENCE.npz``: an exported model against outputs of the authors' code.

The reference holds one batch (``input_ids``, ``target_tokens``, ``loss_masks``) and, per mode,
``<mode>.token_nll`` [B, T], ``.logits`` [B, T, V], ``.chunk_loss`` [B, n], ``.seq_loss`` [B],
``.eval_token_nll`` [T], ``.eval_chunk_loss`` [n] and ``.loss`` []. Modes:

* ``ttt``   — the evaluation forward with test-time training (prefix once, suffix chunk by chunk
  with first-order inner steps at the fully warmed-up inner lr);
* ``nottt`` — the same weights without inner updates: every block with its stored weights (prime
  MLPs included), sliding-window attention. Our whole-sequence forward computes the same function
  as the authors' chunk-by-chunk pass with a window KV cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from lightning_ttt.infer.loading import load_model_dir
from lightning_ttt.tools.verify import Tolerance
from lightning_ttt.ttt.objective import lm_loss

MODES = ("ttt", "nottt")
BATCH = ("input_ids", "target_tokens", "loss_masks")
# float32 tolerances: losses 1e-5, per-token NLL 1e-4, logits 2e-5 of their largest magnitude
TOLERANCES = {"loss": Tolerance(rel=0.0, abs_=1e-5), "seq_loss": Tolerance(rel=0.0, abs_=1e-5),
              "chunk_loss": Tolerance(rel=0.0, abs_=1e-5), "eval_chunk_loss": Tolerance(rel=0.0, abs_=1e-5),
              "token_nll": Tolerance(rel=0.0, abs_=1e-4), "eval_token_nll": Tolerance(rel=0.0, abs_=1e-4),
              "logits": Tolerance(rel=2e-5)}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def read_reference(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as err:
        raise ValueError(f"reference {path} is not a readable .npz file ({err})") from None
    for key in BATCH:
        if key not in arrays:
            raise ValueError(f"reference {path.name} lacks the array {key!r}")
    if not any(key.startswith(f"{mode}.") for key in arrays for mode in MODES):
        raise ValueError(f"reference {path.name} has no outputs to compare (ttt.* or nottt.* arrays)")
    return arrays


def compute(model, ids: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, ttt: bool, update) -> dict[str, np.ndarray]:
    """Every quantity the reference records for one mode."""
    out = lm_loss(model, ids, targets, mask, ttt=ttt, update=update, create_graph=False, keep_logits=True)
    chunk, nll = out.chunk_loss.detach(), out.token_nll.detach()
    values = {"token_nll": nll, "logits": out.logits.detach(), "chunk_loss": chunk, "seq_loss": chunk.mean(1),
              "eval_token_nll": nll.mean(0), "eval_chunk_loss": chunk.mean(0), "loss": chunk.mean()}
    return {key: value.cpu().numpy() for key, value in values.items()}


def verify_import(model_dir: str | Path, reference: str | Path, dtype: str = "float32") -> dict[str, Any]:
    """Run the reference batch through the exported model in every recorded mode; one JSON-ready report."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not supported; expected one of {', '.join(DTYPES)}")
    arrays = read_reference(reference)
    loaded = load_model_dir(model_dir)
    model = loaded.model.to(DTYPES[dtype])
    cfg = model.cfg
    ids, targets = (torch.as_tensor(arrays[k], dtype=torch.long) for k in ("input_ids", "target_tokens"))
    mask = torch.as_tensor(arrays["loss_masks"], dtype=torch.bool)
    if ids.dim() != 2 or ids.shape != targets.shape or ids.shape != mask.shape:
        raise ValueError(f"reference {Path(reference).name}: input_ids, target_tokens and loss_masks must share one "
                         f"[B, T] shape (got {list(ids.shape)}, {list(targets.shape)}, {list(mask.shape)})")
    cfg.check_seq_len(ids.shape[1], "the reference's sequence length")
    largest = int(max(ids.max(), targets.max()))
    if largest >= cfg.vocab_size:
        raise ValueError(f"reference {Path(reference).name}: token id {largest} does not fit vocab_size="
                         f"{cfg.vocab_size} of {model_dir}")
    modes = [mode for mode in MODES if any(key.startswith(f"{mode}.") for key in arrays)]
    if "ttt" in modes and cfg.method != "e2e":
        raise ValueError(f"reference {Path(reference).name} has ttt.* outputs but {model_dir} is method {cfg.method} "
                         "(no TTT blocks)")
    report: dict[str, Any] = {"model_dir": str(model_dir), "reference": str(reference), "dtype": dtype,
                              "model": cfg.name, "modes": {}}
    for mode in modes:
        ours = compute(model, ids, targets, mask, mode == "ttt", loaded.update)
        recorded = {key[len(mode) + 1:] for key in arrays if key.startswith(f"{mode}.")}
        checks = {key: TOLERANCES[key].check(ours[key], arrays[f"{mode}.{key}"]) for key in ours if key in recorded}
        failed = sorted(key for key, check in checks.items() if not check["passed"])
        report["modes"][mode] = {"passed": not failed and "loss" in checks, "failed": failed,
                                 "unchecked": sorted(recorded - set(checks)), "loss": float(ours["loss"]),
                                 "reference_loss": float(arrays[f"{mode}.loss"]) if "loss" in checks else None,
                                 "checks": checks}
    report["passed"] = all(mode["passed"] for mode in report["modes"].values())
    return report


def verify_import_command(model_dir: str, reference: str, /, *,
                          dtype: Literal["float32", "float64"] = "float32") -> int:
    """Compare an exported model with outputs of the authors' code on one batch; prints one JSON report.

    Runs the batch with test-time training and, when the reference records it, without inner
    updates. Exits 0 when every check passes, 1 otherwise.

    Args:
        model_dir: directory written by `ttt import-jax` or `ttt export`.
        reference: .npz with input_ids, target_tokens, loss_masks and ttt.* / nottt.* outputs.
        dtype: precision of our forward pass.
    """
    report = verify_import(model_dir, reference, dtype)
    print(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1
