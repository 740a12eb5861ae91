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


def test_offloaded_block_inputs_leave_the_device_and_keep_the_gradients() -> None:
    """With offload_block_inputs the checkpointed blocks' inputs wait for the backward pass in host memory:
    less device memory between forward and backward, the same gradients."""
    from lightning_ttt.model.checkpointing import checkpoint_blocks

    cfg = ModelConfig.from_preset("debug", "fa")
    ids = torch.randint(0, cfg.vocab_size, (2, 4096), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    held, grads = {}, {}
    for offload in (False, True):
        torch.manual_seed(0)
        model = checkpoint_blocks(Transformer(cfg).cuda(), offload)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        hidden = model(ids)
        torch.cuda.synchronize()
        held[offload] = torch.cuda.memory_allocated() - before
        hidden.float().square().mean().backward()
        grads[offload] = [p.grad.clone() for p in model.parameters()]
    block_inputs = (cfg.n_layers - 1) * ids.numel() * cfg.d_model * 4  # every block input but the embedding's output
    assert held[False] - held[True] >= 0.9 * block_inputs
    for a, b in zip(grads[False], grads[True]):
        torch.testing.assert_close(b, a)
