"""The analytic FLOP count against a hand count and against torch's FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lightning_ttt.config import ModelConfig
from lightning_ttt.model.flops import attended_keys, forward_flops, model_flops
from lightning_ttt.model.transformer import Transformer

# d 8, 2 heads of 4, MLP 12, prime MLP 6, 2 blocks (the last with fast weights), vocabulary 10, window 2
TINY = ModelConfig(method="e2e", vocab_size=10, d_model=8, n_layers=2, n_heads=2, mlp_hidden=12, suffix_len=1,
                   window=2, mini_batch=2, prime_hidden=6, bos_id=8, eos_id=9)


def test_attended_keys():
    assert attended_keys(4, None) == 1 + 2 + 3 + 4
    assert attended_keys(4, 2) == 1 + 2 + 2 + 2
    assert attended_keys(3, 8) == 1 + 2 + 3  # a window longer than the sequence is full attention


def test_tiny_model_against_a_hand_count():
    # Per token, multiply-adds: q,k,v,o 4*8*8 = 256; MLP 3*8*12 = 288; prime 3*8*6 = 144; head 8*10 = 80.
    # Attention over 4 tokens, window 2: 1+2+2+2 = 7 query-key pairs x 2 heads x (4 + 4) = 112 (full: 10 pairs, 160).
    block = 2 * (4 * (256 + 288) + 112)  # 4576 FLOPs
    prime, head = 2 * 4 * 144, 2 * 4 * 80  # 1152, 640
    assert forward_flops(TINY, 4) == {"prefix": block, "suffix": block + prime, "head": head}
    forward, suffix_and_head = 2 * block + prime + head, block + prime + head
    assert model_flops(TINY, 4) == 3 * forward + 6 * suffix_and_head == 71040  # meta-learning
    assert model_flops(TINY, 4, training=False) == forward + 2 * suffix_and_head == 23680  # TTT in evaluation
    fa_block = 2 * (4 * (256 + 288) + 160)
    assert model_flops(TINY, 4, "fa") == 3 * (2 * fa_block + head) == 29952
    naive = TINY.replace(meta_learning=False)  # TTT-naive trains the prime MLPs as ordinary weights
    assert model_flops(naive, 4) == 3 * forward
    with pytest.raises(ValueError, match="method='xa' is unknown"):
        model_flops(TINY, 4, "xa")


def test_matrix_products_match_torchs_flop_counter():
    cfg = ModelConfig.from_preset("debug", "fa")
    model = Transformer(cfg)
    with FlopCounterMode(display=False) as counter:
        model(torch.randint(0, 256, (1, 64)))  # the blocks only: the head is applied by `logits`
    measured = counter.get_flop_counts()["Global"][torch.ops.aten.mm]
    attention = cfg.n_layers * 4 * cfg.n_heads * cfg.head_dim * attended_keys(64, None)
    assert measured == forward_flops(cfg, 64)["prefix"] - attention
