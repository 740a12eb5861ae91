"""Parameter counts and training FLOPs per token of a model configuration (one formula for `ttt plan` and the benchmarks).

Per training token, forward + backward: ``6·N + 12·L·d·c`` with N all parameters (the tied head
is a matmul), L blocks, d = heads·head_dim and c the mean attended context: T/2 for full causal
attention, ``w·(1 - w/2T)`` for a sliding window w. e2e meta-training adds about ``12·N_s`` for the
inner gradient and its second-order backward (N_s: suffix blocks + head), an estimate.
"""

from __future__ import annotations

import torch

from lightning_ttt.config import ModelConfig


def parameter_counts(cfg: ModelConfig) -> dict[str, int]:
    """Total, embedding (+ untied head), fast-weight (prime MLP) and suffix+head parameter counts, from a
    meta-device model."""
    from lightning_ttt.model.transformer import Transformer

    with torch.device("meta"):
        model = Transformer(cfg)
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("embed.", "lm_head.")))
    fast = sum(p.numel() for n, p in model.named_parameters() if ".prime." in n)
    suffix = sum(p.numel() for b in model.blocks[cfg.prefix_len:] for p in b.parameters()) if cfg.has_prime else 0
    return {"total": total, "embedding": embedding, "fast": fast,
            "suffix_and_head": suffix + cfg.vocab_size * cfg.d_model}


def train_flops_per_token(cfg: ModelConfig, seq_len: int, counts: dict[str, int] | None = None) -> float:
    """Training FLOPs per token (forward + backward) of ``cfg`` at sequence length ``seq_len`` (module docstring)."""
    n = counts or parameter_counts(cfg)
    w = min(cfg.attention_window or seq_len, seq_len)
    context = w * (1 - w / (2 * seq_len))
    inner = 12 * n["suffix_and_head"] if cfg.ttt_in_training else 0
    return 6 * n["total"] + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * context + inner
