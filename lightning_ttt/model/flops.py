"""An analytic FLOP count of the model: matrix multiplications only (2 FLOPs per multiply-add).

Norms, RoPE, activations, softmax and the embedding lookup are left out (they are a few percent at
most). Per sequence of ``T`` tokens, the forward pass of one block costs the q/k/v/o projections,
the SwiGLU MLP (and the prime MLP in e2e suffix blocks), and attention scores plus the weighted sum
over the keys each query sees: ``min(t + 1, window)`` at position ``t`` (``t + 1`` without a window).
The output head adds ``2·d·V`` per token.

Training is forward + backward, the backward costing twice the forward. TTT-E2E meta-training
adds the inner gradient of every mini-batch (a backward through the suffix blocks and the head,
twice their forward) and the outer backward through it (twice again): ``3·F + 6·F_suffix``.
Evaluation is ``F``, plus the first-order inner gradient ``2·F_suffix`` when TTT runs.

This is the one FLOPs formula of the project: the model summary, Lightning's ThroughputMonitor,
``ttt plan`` and the benchmarks' MFU all use it.
"""

from __future__ import annotations

import torch

from lightning_ttt.config import METHODS, ModelConfig


def attended_keys(seq_len: int, window: int | None) -> int:
    """Query-key pairs of causal (``window=None``) or sliding-window attention over ``seq_len`` tokens."""
    w = seq_len if window is None else min(window, seq_len)
    return w * (w + 1) // 2 + (seq_len - w) * w  # the first w queries see 1..w keys, the rest w each


def forward_flops(cfg: ModelConfig, seq_len: int) -> dict[str, int]:
    """Forward FLOPs of one sequence: ``prefix`` (blocks without fast weights), ``suffix`` (blocks with
    them, e2e only) and ``head``; their sum is the whole forward pass."""
    d, hd, T = cfg.d_model, cfg.head_dim, seq_len
    projections = 2 * T * d * hd * (2 * cfg.n_heads + 2 * cfg.kv_heads)  # wq, wo: H heads; wk, wv: KV heads
    attention = 2 * 2 * cfg.n_heads * hd * attended_keys(T, cfg.attention_window)  # q·k and weights·v
    block = projections + attention + 2 * T * 3 * d * cfg.mlp_hidden  # SwiGLU: w1, w3, w2
    suffix = cfg.suffix_len if cfg.has_prime else 0
    prime = 2 * T * 3 * d * cfg.prime_width
    return {"prefix": (cfg.n_layers - suffix) * block, "suffix": suffix * (block + prime),
            "head": 2 * T * d * cfg.vocab_size}


def model_flops(cfg: ModelConfig, seq_len: int, method: str | None = None, *, training: bool = True) -> int:
    """FLOPs of one sequence of ``seq_len`` tokens: a training step's forward + backward (``training``)
    or an evaluation's forward, for ``method`` (fa, swa or e2e; None: ``cfg.method``). Another method
    keeps the widths of ``cfg`` and changes the attention span and test-time training."""
    if method is not None and method != cfg.method:
        if method not in METHODS:
            raise ValueError(f"method={method!r} is unknown; expected one of {', '.join(METHODS)}")
        cfg = cfg.replace(method=method, **({} if method == "e2e" else {"suffix_len": 0}))
    parts = forward_flops(cfg, seq_len)
    forward = sum(parts.values())
    ttt = parts["suffix"] + parts["head"] if cfg.has_prime else 0  # what the inner gradient runs back through
    if training:
        return 3 * forward + (6 * ttt if cfg.ttt_in_training else 0)
    return forward + 2 * ttt


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token of ``cfg`` at sequence length ``seq_len``: ``model_flops / seq_len``."""
    return model_flops(cfg, seq_len) / seq_len


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
