"""`ttt plan`'s memory model against the measured peak of one training step on CPU (fp32, one device).

The peak is the exact count of live tensor bytes (``lightning_ttt.tools.measure.PeakTensorBytes``) during
a second training step (forward, backward, AdamW step: the optimizer state exists from the first), for the
debug preset and a 125m-width model at short T, for fa, swa and e2e under each checkpointing policy.
Prediction within ±25% of the measurement. Each case runs in a fresh Python process, as a training run
would: state cached by earlier tests in the same process (attention masks, RoPE tables) would otherwise
move the count. ``python tests/tools/test_plan_measured.py`` prints the table; ``--case NAME`` one row.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lightning_ttt.config import ModelConfig
from lightning_ttt.model.checkpointing import checkpoint_blocks
from lightning_ttt.model.transformer import Transformer
from lightning_ttt.tools.measure import PeakTensorBytes
from lightning_ttt.tools.plan import counts, memory
from lightning_ttt.ttt.objective import lm_loss
from lightning_ttt.ttt.update import make_update

TOLERANCE = 0.25
WIDE = dict(d_model=768, n_heads=12, n_layers=2)  # 125m width, two blocks, byte vocabulary
# (name, preset overrides, method, seq_len, checkpoint_blocks, checkpoint_chunks)
CASES = [
    ("debug-fa", {}, "fa", 512, False, "none"),
    ("debug-fa-cb", {}, "fa", 512, True, "none"),
    ("debug-swa", dict(window=64), "swa", 512, False, "none"),
    ("debug-swa-cb", dict(window=64), "swa", 512, True, "none"),
    *[(f"debug-e2e-{cc}", dict(window=16, mini_batch=8), "e2e", 128, False, cc) for cc in ("none", "each", "sqrt", "log")],
    ("debug-e2e-each-cb", dict(window=16, mini_batch=8), "e2e", 128, True, "each"),
    ("125m-width-fa-cb", dict(WIDE, mlp_hidden=2048), "fa", 256, True, "none"),
    ("125m-width-e2e-each", dict(WIDE, mlp_hidden=1664, suffix_len=1, window=32, mini_batch=16), "e2e", 64, True, "each"),
]


def measured_and_predicted(overrides, method, seq_len, blocks, chunks) -> tuple[float, float]:
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("debug", method, checkpoint_blocks=blocks, checkpoint_chunks=chunks, **overrides)
    model = Transformer(cfg)
    if blocks:
        checkpoint_blocks(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids, targets = torch.randint(0, cfg.vocab_size, (2, 1, seq_len))
    mask = torch.ones(1, seq_len)
    ttt = cfg.ttt_in_training
    update = make_update(cfg) if ttt else None

    def step() -> None:
        lm_loss(model, ids, targets, mask, ttt=ttt, update=update, create_graph=ttt, checkpoint_chunks=chunks).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated, as the planner counts them

    step()
    meter = PeakTensorBytes()
    meter.track([*model.parameters(), *(p.grad for p in model.parameters()),
                 *(t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor))])
    with meter:
        step()
    parts = memory(cfg, counts(cfg), seq_len=seq_len, micro=1, strategy="auto", world=1, precision="32")
    return meter.peak, sum(parts.values())


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_planned_memory_is_within_25_percent_of_the_measured_peak(case) -> None:
    done = subprocess.run([sys.executable, __file__, "--case", case[0]], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    measured, predicted = json.loads(done.stdout.splitlines()[-1])
    assert abs(predicted - measured) <= TOLERANCE * measured, f"{case[0]}: planned {predicted / 2**20:.2f} MiB, " \
                                                               f"measured {measured / 2**20:.2f} MiB"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--case"]:  # one case, as [measured, predicted] bytes in JSON (the test's subprocess)
        (args,) = [c[1:] for c in CASES if c[0] == sys.argv[2]]
        print(json.dumps(measured_and_predicted(*args)))
        sys.exit(0)
    for name, *args in CASES:
        m, p = measured_and_predicted(*args)
        print(f"{name:24s} measured {m / 2**20:8.2f} MiB  planned {p / 2**20:8.2f} MiB  ratio {p / m:5.2f}", flush=True)
