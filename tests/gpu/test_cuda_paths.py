"""CUDA paths: fused attention kernels agree with the explicit one; a bf16 meta step runs. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from lightning_ttt.config import ModelConfig
from lightning_ttt.lit.module import TTTLanguageModel
from lightning_ttt.model.attention import flash_attn_available
from lightning_ttt.model.transformer import Transformer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
KERNELS = ["sdpa"] + (["flash_attn"] if flash_attn_available() else [])


def _batch(batch: int, seq: int, vocab: int = 256) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, vocab, (batch, seq + 1), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    return {"input_ids": ids[:, :-1], "targets": ids[:, 1:],
            "loss_mask": torch.ones(batch, seq, dtype=torch.bool, device="cuda")}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("method", ["fa", "swa"])
def test_fused_attention_matches_the_explicit_kernel(kernel: str, method: str) -> None:
    cfg = ModelConfig.from_preset("debug", method)
    torch.manual_seed(0)
    reference = Transformer(cfg.replace(attention_kernel="explicit")).cuda()
    fused = Transformer(cfg.replace(attention_kernel=kernel)).cuda()
    fused.load_state_dict(reference.state_dict())
    ids = _batch(2, 512)["input_ids"]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        want, got = reference.logits(reference(ids)).float(), fused.logits(fused(ids)).float()
    torch.testing.assert_close(got, want, rtol=0, atol=5e-2)  # bf16 rounding of different summation orders


def test_bf16_meta_step_runs() -> None:
    torch.manual_seed(0)
    model = TTTLanguageModel(method="e2e", seq_len=256, config={"checkpoint_chunks": True}).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(_batch(2, 256), ttt=True, create_graph=True).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for n, p in model.named_parameters() if ".prime." in n]
    assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
