"""The name and layout mapping between the authors' arrays and our state dict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_ttt.config import ModelConfig
from lightning_ttt.convert.jax_names import PREFIX, expected_shapes, rules_for, to_authors, to_ours
from lightning_ttt.model.transformer import Transformer


def _shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {name: tuple(t.shape) for name, t in Transformer(cfg).state_dict().items()}


def test_released_1b_shapes():
    cfg = ModelConfig.from_preset("1b", "e2e")
    shapes = expected_shapes(cfg, _shapes(cfg))
    assert len(shapes) == 20
    assert shapes[PREFIX + "h.prime_storage.feed_forward_prime.w1.weight"] == (6, 2048, 4352)
    assert shapes[PREFIX + "h.prime_storage.feed_forward_prime.w2.weight"] == (6, 4352, 2048)
    assert shapes[PREFIX + "h.blocks.seq_modeling_block.wq.weight"] == (24, 2048, 2048)
    assert shapes[PREFIX + "h.blocks.seq_modeling_block.q_norm.weight"] == (24, 64)
    assert shapes[PREFIX + "wte.weight"] == (128256, 2048)
    swa = ModelConfig.from_preset("1b", "swa")
    assert not any("prime" in name for name in expected_shapes(swa, _shapes(swa)))


def test_layouts_roundtrip_and_place_every_slice():
    cfg = ModelConfig(vocab_size=50, d_model=24, n_layers=5, n_heads=3, mlp_hidden=40, suffix_len=3, window=8,
                      mini_batch=4, bos_id=1, eos_id=2)
    model = Transformer(cfg)
    state = {name: t.detach().numpy() for name, t in model.state_dict().items()}
    theirs = to_authors(state, cfg)
    assert {name: a.shape for name, a in theirs.items()} == expected_shapes(cfg, _shapes(cfg))
    # stacked [in, out]: block i's wq is slice i transposed; prime storage slot s is block L - S + s
    np.testing.assert_array_equal(theirs[PREFIX + "h.blocks.seq_modeling_block.wq.weight"][3],
                                  state["blocks.3.attn.wq.weight"].T)
    np.testing.assert_array_equal(theirs[PREFIX + "h.prime_storage.feed_forward_prime.w2.weight"][0],
                                  state["blocks.2.prime.w2.weight"].T)
    np.testing.assert_array_equal(theirs[PREFIX + "h.prime_storage.ffn_prime_post_norm.weight"][2],
                                  state["blocks.4.prime_post_norm.weight"])
    back = {}
    for name, array in theirs.items():
        for ours, piece in to_ours(name, array, cfg):
            assert piece.flags.c_contiguous and not np.shares_memory(piece, array)
            back[ours] = piece
    assert set(back) == set(state)
    for name in state:
        np.testing.assert_array_equal(back[name], state[name])


def test_rules_cover_our_parameters_or_fail_loudly():
    cfg = ModelConfig(suffix_len=1)
    shapes = _shapes(cfg)
    shapes["blocks.0.attn.new_gate.weight"] = (4, 4)  # a parameter the mapping does not know
    with pytest.raises(RuntimeError, match="does not cover our parameters"):
        expected_shapes(cfg, shapes)
    assert len(rules_for(cfg)) == 20
