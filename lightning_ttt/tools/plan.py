"""``ttt plan --config RECIPE [--config ...] [--key value ...]``: size, compute and memory of a recipe before launching it.

The settings are parsed as ``ttt fit`` parses them (``tools.recipe``). Parameters are counted on the
meta device (exact; the tied embedding/head once). Formulas (per
training token, forward + backward):

* FLOPs per token = ``lightning_ttt.model.flops.train_flops_per_token``: matrix multiplications of
  forward + backward over the keys each query attends to; e2e meta-training adds the inner gradient
  and its second-order backward through the suffix blocks and the head.
* Memory per device = weights, gradients and AdamW moments in fp32 (16 B/param; ZeRO-1 shards
  the 8 B of moments, ZeRO-2 also the 4 B of gradients) + activations of one micro-batch:
  bf16 (12·d + 3·h)·2 B per token per block (no attention scores: fused/windowed kernels), the
  fp32 logits and their gradient (8·V B per token), and for e2e the fast weights kept for every
  inner step (T/b copies of the prime MLPs, fp32) plus the suffix's inner-backward graph. With
  ``checkpoint_chunks`` the suffix keeps one mini-batch of activations instead of T. Rough: it
  is meant to flag recipes that cannot fit, not to replace a profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning_ttt.config import ModelConfig
from lightning_ttt.model.flops import parameter_counts, train_flops_per_token
from lightning_ttt.model.loss import LOSS_TOKENS
from lightning_ttt.tools.recipe import parse_recipe, recipe_model
from lightning_ttt.ttt.schedule import peak_states

DEVICE_GB = 80.0


counts = parameter_counts  # the name `ttt plan` has always used


# Elements kept for the backward pass per token of one block (residual stream, norms, q/k/v, attention
# output, SwiGLU in/outputs), fitted to measured peaks (tests/tools/test_plan_measured.py).
BLOCK_D, BLOCK_H = 22, 4
SHARDED = ("fsdp", "fsdp2", "modelparallel", "model_parallel", "stage_3")


def memory(cfg: ModelConfig, n: dict[str, int], *, seq_len: int, micro: int, strategy: str, world: int,
           precision: str, sliced_loss: bool = True) -> dict[str, float]:
    """Bytes per device at the peak of one training step, by part."""
    strategy = strategy.lower()
    full = world if any(s in strategy for s in SHARDED) else 1
    grads_shard = world if full > 1 or "stage_2" in strategy else 1
    opt_shard = world if full > 1 or "stage" in strategy else 1
    N, d, h, V, T = n["total"], cfg.d_model, cfg.mlp_hidden, cfg.vocab_size, seq_len
    a = 2 if "16" in str(precision) else 4  # bytes of a matmul output (bf16-mixed: bf16)
    tokens = micro * T
    parts = {"weights": 4 * N / full, "gradients": 4 * N / grads_shard, "optimizer": 8 * N / opt_shard}
    if full > 1:  # one gathered unit at a time: the suffix + head for e2e (its inner loop), else the largest block
        unit = n["suffix_and_head"] if cfg.ttt_in_training else max(n["embedding"], (N - n["embedding"]) // cfg.n_layers)
        parts["gathered unit"] = 4 * unit
    block = (BLOCK_D * d + BLOCK_H * h) * a  # bytes per token per block
    whole = cfg.prefix_len if cfg.ttt_in_training else cfg.n_layers
    if cfg.checkpoint_blocks:  # with offload_block_inputs they wait in host memory; one is on the device at a time
        parts["block inputs"] = tokens * d * 4 * (1 if cfg.offload_block_inputs else whole + 1)
        parts["one block recomputed"] = tokens * block
    else:
        parts["blocks"] = tokens * block * whole
    parts["hidden-state gradients"] = 2 * tokens * d * 4
    if not cfg.ttt_in_training:
        parts["logits"] = micro * min(T, LOSS_TOKENS) * V * 12 if sliced_loss else tokens * V * (a + 8)
        return parts
    b, k, heads = cfg.loss_chunk(T), cfg.window, cfg.n_heads
    chunks = T // b
    schedule = {True: "each", False: "none"}.get(cfg.checkpoint_chunks, cfg.checkpoint_chunks)
    state = micro * (n["fast"] * 4 + cfg.suffix_len * 2 * k * cfg.kv_heads * cfg.head_dim * a)
    # one chunk's graph with gradients of gradients: its activations (the inner backward doubles them),
    # the attention probabilities of the double-backward-safe kernel, its logits
    graph = micro * (2 * b * cfg.suffix_len * (BLOCK_D * d + BLOCK_H * (h + cfg.prime_width)) * 4
                     + 3 * cfg.suffix_len * heads * b * (k + b) * a + 3 * b * V * 4) + 3 * n["fast"] * micro * 4
    parts["inner states"] = peak_states(chunks, schedule) * state
    # without checkpointing every chunk's graph stays; about half of a graph is transient (measured)
    parts["inner chunk graphs"] = graph * (1 + (chunks - 1) / 2 if schedule == "none" else 1)
    return parts


def plan(settings: dict[str, Any], cfg: ModelConfig) -> dict[str, Any]:
    """Sizes, FLOPs and memory of a run of ``settings`` (parsed, as a dict) building model ``cfg``."""
    data, trainer = settings["data"], settings["trainer"]
    seq_len, micro = int(data["seq_len"]), int(data["batch_size"])
    devices = trainer.get("devices", 1)
    devices = devices if isinstance(devices, int) else 1
    world = devices * int(trainer.get("num_nodes") or 1)
    accumulate = int(trainer.get("accumulate_grad_batches") or 1)
    strategy = str(trainer.get("strategy") or "auto")
    n = counts(cfg)
    T = seq_len
    flops = train_flops_per_token(cfg, T)
    parts = memory(cfg, n, seq_len=T, micro=micro, strategy=strategy, world=world,
                   precision=str(trainer.get("precision") or "32"))
    state = sum(parts[k] for k in ("weights", "gradients", "optimizer"))
    total_gb = sum(parts.values()) / 2**30
    return {"name": cfg.name, "params": n["total"], "embedding_params": n["embedding"], "fast_params": n["fast"],
            "vocab_size": cfg.vocab_size, "tied": cfg.tie_embeddings, "attention": _attention(cfg), "method": cfg.method,
            "seq_len": T, "micro_batch": micro, "world": world, "accumulate": accumulate,
            "tokens_per_step": micro * T * world * accumulate, "strategy": strategy,
            "checkpoint_chunks": cfg.checkpoint_chunks, "checkpoint_blocks": cfg.checkpoint_blocks,
            "offload_block_inputs": cfg.offload_block_inputs, "flops_per_token": flops,
            "state_gb": state / 2**30, "activation_gb": total_gb - state / 2**30, "memory_gb": total_gb,
            "parts_gb": {k: v / 2**30 for k, v in parts.items()}, "fits": total_gb <= DEVICE_GB}


def memory_advice(p: dict[str, Any]) -> list[str]:
    """Ways to lower the memory per device that the recipe does not use yet."""
    advice = []
    if p["micro_batch"] > 1:
        advice.append(f"lower data.batch_size (now {p['micro_batch']}) and raise trainer.accumulate_grad_batches")
    if not p["checkpoint_blocks"]:
        advice.append("set model.config.checkpoint_blocks: true")
    elif not p["offload_block_inputs"]:
        advice.append("keep the checkpointed block inputs in host memory: model.config.offload_block_inputs: true")
    if p["method"] == "e2e" and p["checkpoint_chunks"] in ("none", "each"):
        advice.append(f"set model.config.checkpoint_chunks: sqrt or log (now {p['checkpoint_chunks']})")
    if p["world"] > 1 and not any(s in p["strategy"] for s in SHARDED):
        advice.append("shard weights, gradients and optimizer state with trainer.strategy: fsdp2")
    return advice


def _attention(cfg: ModelConfig) -> str:
    span = f"window {cfg.attention_window}" if cfg.attention_window else "full causal"
    return span + (f", test-time training every {cfg.mini_batch} tokens" if cfg.has_prime else "")


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1_000_000 else f"{n / 1e3:.1f}K"


def render(p: dict[str, Any], vocabulary: str) -> str:
    rest = p["params"] - p["embedding_params"]
    head = "tied head" if p["tied"] else "and head"
    lines = [
        f"model            {p['name']}: {_count(p['params'])} parameters = {_count(p['embedding_params'])} "
        f"embedding ({head}) + {_count(rest)} blocks; {_count(p['fast_params'])} fast weights",
        f"vocabulary       {p['vocab_size']:,} ids, {vocabulary}",
        f"attention        {p['attention']}",
        f"batch            {p['world']} devices x {p['micro_batch']} x {p['seq_len']} tokens x accumulate "
        f"{p['accumulate']} = {p['tokens_per_step']:,} tokens/step ({p['strategy']})",
        f"FLOPs/token      {p['flops_per_token'] / 1e9:.2f} GFLOP (matrix products, forward + backward; e2e adds its inner gradient and the second-order backward)",
        f"memory/device    {p['memory_gb']:.1f} GB = {p['state_gb']:.1f} GB weights+grads+AdamW (fp32) + "
        f"{p['activation_gb']:.1f} GB activations (checkpoint_blocks={p['checkpoint_blocks']}, "
        f"checkpoint_chunks={p['checkpoint_chunks']})",
        "  of which       " + ", ".join(f"{k} {v:.2f}" for k, v in p["parts_gb"].items() if v >= 0.005),
    ]
    if not p["fits"]:
        advice = memory_advice(p)
        todo = "; ".join(advice) if advice else ("the recipe already uses every memory setting the planner knows: "
                                                 "shorten data.seq_len, use a smaller model or more memory per device")
        lines.append(f"WARNING: about {p['memory_gb']:.0f} GB per device will not fit an {DEVICE_GB:.0f} GB GPU "
                     f"(a rough estimate); {todo}")
    return "\n".join(lines)


def plan_command(argv: Sequence[str], /) -> int:
    """Parameters, FLOPs per token and memory per device of a recipe, before launching it.

    Takes the settings of ``ttt fit``: ``--config RECIPE`` (several stack, the last wins) and
    ``--key value`` overrides such as ``--model.config.window 256`` (``ttt plan --help`` lists them).
    """
    settings = parse_recipe(argv, prog="ttt plan").as_dict()
    max_steps = (settings.get("trainer") or {}).get("max_steps")
    if isinstance(max_steps, int) and max_steps < -1:
        raise ValueError(f"--trainer.max_steps={max_steps}: expected a number of steps >= 0, or -1 (no limit)")
    cfg, vocabulary = recipe_model(settings)
    print(render(plan(settings, cfg), vocabulary))
    return 0
