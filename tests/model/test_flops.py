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
    forward = 2 * block + prime + head
    # the inner gradient: head and MLP input gradients, the prime MLP's weight gradients + its w2 input gradient
    inner = head + 2 * 4 * 288 + 2 * 4 * (3 * 8 * 6) + 2 * 4 * (8 * 6)  # 640 + 2304 + 1152 + 384 = 4480
    # two mini-batches: both inner gradients are taken (inner is their sum), only the first one's is
    # differentiated again (twice its cost): the last update feeds nothing
    assert model_flops(TINY, 4) == 3 * forward + inner + 2 * (inner // 2) == 41792  # meta-learning
    assert model_flops(TINY, 4, training=False) == forward + inner == 15424  # TTT in evaluation
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


@pytest.mark.parametrize("seq_len", [64, 256])
def test_meta_learning_step_matches_torchs_flop_counter(seq_len):
    """Forward, inner gradients (create_graph) and the outer backward of a real e2e step, counted by torch.

    Attention runs in SDPA's fused CPU kernel, which the counter does not see: the formula's attention
    terms (a suffix_len 1 model's inner gradient has none) are left out of the comparison.
    """
    from lightning_ttt.ttt.objective import lm_loss
    from lightning_ttt.ttt.update import make_update

    cfg = ModelConfig.from_preset("debug", "e2e", window=64, mini_batch=32)
    model = Transformer(cfg)
    ids = torch.randint(0, 256, (1, seq_len + 1))
    with FlopCounterMode(display=False) as counter:
        out = lm_loss(model, ids[:, :-1], ids[:, 1:], torch.ones(1, seq_len, dtype=torch.bool), ttt=True,
                      update=make_update(cfg), create_graph=True)
        out.loss.backward()
    counts = counter.get_flop_counts()["Global"]
    measured = counts[torch.ops.aten.mm] + counts[torch.ops.aten.bmm]
    attention = cfg.n_layers * 4 * cfg.n_heads * cfg.head_dim * attended_keys(seq_len, cfg.window)
    assert measured == pytest.approx(model_flops(cfg, seq_len) - 3 * attention, rel=0.01)
