"""Tiny float64 models for the inference tests."""

from __future__ import annotations

import torch

from lightning_ttt.config import ModelConfig
from lightning_ttt.model.transformer import Transformer
from tiny_models import randomize_weights  # tests/tiny_models.py


def tiny_model(method: str = "e2e", seed: int = 0, **overrides) -> Transformer:
    """3 blocks (2 with fast weights for e2e), window 6, b 4, O(1) weights so TTT steps matter."""
    settings = dict(method=method, vocab_size=11, d_model=8, n_layers=3, n_heads=2, mlp_hidden=8,
                    suffix_len=2 if method == "e2e" else 0, window=6, mini_batch=4, bos_id=1, eos_id=2,
                    inner_lr=0.5, inner_clip=1e3)
    settings.update(overrides)
    torch.manual_seed(seed)
    return randomize_weights(Transformer(ModelConfig(**settings)).double(), std=0.5)
