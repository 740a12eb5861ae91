"""An analytic FLOP count of the model: matrix multiplications only (2 FLOPs per multiply-add).

Norms, RoPE, activations, softmax and the embedding lookup are left out (they are a few percent at
most). Per sequence of ``T`` tokens, the forward pass of one block costs the q/k/v/o projections,
the SwiGLU MLP (and the prime MLP in e2e suffix blocks), and attention scores plus the weighted sum
over the keys each query sees: ``min(t + 1, window)`` at position ``t`` (``t + 1`` without a window).
The output head adds ``2·d·V`` per token.

Training is forward + backward, the backward costing twice the forward. TTT-E2E meta-training
adds, per mini-batch, the inner gradient ``I`` (a backward from the chunk's loss to its fast weights:
the input gradients of the head and of every suffix MLP, the prime MLPs' weight gradients, and —
for every suffix block after the first — the input gradients of its prime MLP and attention) and the
outer backward through it (twice again, except for the last mini-batch, whose update feeds nothing):
``3·F + I·(3 - 2/n)`` for ``n`` mini-batches. Evaluation is ``F``, plus ``I`` when TTT runs. The
test checks this against torch's FLOP counter on a real meta-learning step.

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


def _sublayers(cfg: ModelConfig, seq_len: int) -> dict[str, int]:
    """Forward FLOPs of one block's parts over ``seq_len`` tokens: projections, attention, MLP, prime MLP, and the head."""
    d, hd, T = cfg.d_model, cfg.head_dim, seq_len
    return {
        "projections": 2 * T * d * hd * (2 * cfg.n_heads + 2 * cfg.kv_heads),  # wq, wo: H heads; wk, wv: KV heads
        "attention": 2 * 2 * cfg.n_heads * hd * attended_keys(T, cfg.attention_window),  # q·k and weights·v
        "mlp": 2 * T * 3 * d * cfg.mlp_hidden,  # SwiGLU: w1, w3, w2
        "prime": 2 * T * 3 * d * cfg.prime_width,
        "head": 2 * T * d * cfg.vocab_size,
    }


def forward_flops(cfg: ModelConfig, seq_len: int) -> dict[str, int]:
    """Forward FLOPs of one sequence: ``prefix`` (blocks without fast weights), ``suffix`` (blocks with
    them, e2e only) and ``head``; their sum is the whole forward pass."""
    part = _sublayers(cfg, seq_len)
    block = part["projections"] + part["attention"] + part["mlp"]
    suffix = cfg.suffix_len if cfg.has_prime else 0
    return {"prefix": (cfg.n_layers - suffix) * block, "suffix": suffix * (block + part["prime"]), "head": part["head"]}


def inner_gradient_flops(cfg: ModelConfig, seq_len: int) -> int:
    """FLOPs of the inner gradients of all mini-batches of one sequence (0 without fast weights).

    Back from the loss: the head's and every suffix MLP's input gradient (one forward's worth each),
    every prime MLP's weight gradients plus the input gradient of its output projection (4/3 of its
    forward); the first suffix block stops there (its attention does not depend on fast weights),
    later ones also pass the input gradient through their prime MLP's first two projections (2/3)
    and their attention (the projections once, the scores twice).
    """
    if not cfg.has_prime:
        return 0
    part = _sublayers(cfg, seq_len)
    per_block = part["mlp"] + part["prime"] * 4 // 3
    through = part["prime"] * 2 // 3 + part["projections"] + 2 * part["attention"]
    return part["head"] + cfg.suffix_len * per_block + (cfg.suffix_len - 1) * through


def model_flops(cfg: ModelConfig, seq_len: int, method: str | None = None, *, training: bool = True) -> int:
    """FLOPs of one sequence of ``seq_len`` tokens: a training step's forward + backward (``training``)
    or an evaluation's forward, for ``method`` (fa, swa or e2e; None: ``cfg.method``). Another method
    keeps the widths of ``cfg`` and changes the attention span and test-time training."""
    if method is not None and method != cfg.method:
        if method not in METHODS:
            raise ValueError(f"method={method!r} is unknown; expected one of {', '.join(METHODS)}")
        cfg = cfg.replace(method=method, **({} if method == "e2e" else {"suffix_len": 0}))
    forward = sum(forward_flops(cfg, seq_len).values())
    inner = inner_gradient_flops(cfg, seq_len)
    if not training:
        return forward + inner
    if not cfg.ttt_in_training:
        return 3 * forward
    chunks = seq_len // cfg.loss_chunk(seq_len)
    return 3 * forward + inner * (3 * chunks - 2) // chunks  # the last update's gradient is not differentiated


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
