"""DeepSpeed ZeRO stage 2 carries the meta-learning step: one optimizer step equals the plain one.

Skipped without CUDA or without the `deepspeed` extra (`pip install -e ".[deepspeed]"`).
"""

from __future__ import annotations

import importlib.util

import lightning as L
import pytest
import torch

from lightning_ttt.lit.module import TTTLanguageModel

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs the deepspeed extra"),
]
SEQ_LEN = 128


class _Windows(torch.utils.data.Dataset):
    def __init__(self, count: int = 4) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 256, (count, SEQ_LEN + 1), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.ids[i]
        return {"input_ids": ids[:-1], "targets": ids[1:], "loss_mask": torch.ones(SEQ_LEN, dtype=torch.bool)}


def _one_step(strategy: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    module = TTTLanguageModel(method="e2e", seq_len=SEQ_LEN, config={"suffix_len": 2})
    trainer = L.Trainer(accelerator="gpu", devices=1, strategy=strategy, precision="32-true", max_steps=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, torch.utils.data.DataLoader(_Windows(), batch_size=2))
    return {name: p.detach().float().cpu().clone() for name, p in module.named_parameters()}


def test_deepspeed_stage_2_step_equals_plain_step() -> None:
    plain = _one_step("auto")
    zero2 = _one_step("deepspeed_stage_2")
    assert plain.keys() == zero2.keys()
    for name in plain:
        torch.testing.assert_close(zero2[name], plain[name], rtol=1e-4, atol=1e-5, msg=f"parameter {name}")
