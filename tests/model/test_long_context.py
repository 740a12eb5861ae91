"""32K-token sequences run on CPU: sliding-window memory is O(T·k), never T×T."""

from __future__ import annotations

import pytest
import torch

from lightning_ttt.config import ModelConfig
from lightning_ttt.model.transformer import Transformer
from lightning_ttt.ttt.objective import lm_loss
from lightning_ttt.ttt.update import make_update

SEQ_LEN = 32768


@pytest.mark.slow
@pytest.mark.parametrize("method", ["swa", "e2e"])
def test_debug_model_evaluates_32k_tokens(method: str) -> None:
    cfg = ModelConfig.from_preset("debug", method, window=512, mini_batch=512)
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    ids = torch.randint(0, 256, (1, SEQ_LEN + 1))
    mask = torch.ones(1, SEQ_LEN, dtype=torch.bool)
    with torch.no_grad():
        out = lm_loss(model, ids[:, :-1], ids[:, 1:], mask, ttt=method == "e2e", update=make_update(cfg))
    assert out.token_nll.shape == (1, SEQ_LEN)
    assert torch.isfinite(out.token_nll).all()
    # A randomly initialised model is near-uniform over the 258 ids at every position.
    assert abs(out.loss.item() - torch.log(torch.tensor(258.0)).item()) < 0.5
