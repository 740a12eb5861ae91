"""Paths of the vendored authors' checkpoint and the released models' configs (shared by tests/convert)."""

from __future__ import annotations

from pathlib import Path

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "authors_checkpoint"
RELEASED_ROOT = FIXTURE / "checkpoints" / "tiny" / "tiny_ttt_e2e_pretrain_dclm_8k_1x_cc"
TRAINER_ROOT = FIXTURE / "checkpoints" / "tiny" / "pretrain-tiny-e2e"
AUTHORS_CONFIG = FIXTURE / "authors_config.json"
REFERENCE = FIXTURE / "reference.npz"

# The released TTT-E2E models in the authors' keys (their experiment configs; the checkpoints carry none).
RELEASED = {
    "125m": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=1664, suffix_len=3),
    "1b": dict(num_hidden_layers=24, hidden_size=2048, num_attention_heads=32, intermediate_size=4352, suffix_len=6),
    "3b": dict(num_hidden_layers=32, hidden_size=2560, num_attention_heads=32, intermediate_size=5632, suffix_len=8),
}
COMMON = dict(vocab_size=128256, bos_token_id=128000, eos_token_id=128001, tie_word_embeddings=True,
              seq_modeling_block="SWA", sliding_window_size=8192, mini_batch_size=1024, rope_theta=500000.0,
              prime=True, rms_norm_eps=1e-6, qk_norm=True, pre_norm=True, post_norm=True, feed_forward_prime="swiglu")
