"""Parameter names and layouts of the authors' JAX model, mapped onto ours.

Their arrays (after the ``language_model.model.`` prefix) differ from our state dict in three ways:

* matrices are stored ``[in, out]`` and applied as ``x @ W``; ours are ``nn.Linear`` ``[out, in]``;
* per-block tensors are stacked on a leading axis: ``h.blocks.*`` over all L blocks, and
  ``h.prime_storage.*`` over the S suffix blocks (index s is block L − S + s);
* the embedding is tied: ``wte`` is also the output layer, as our ``embed``.

Attention projections are head-major on both sides (output column ``h·hd + e`` is dimension e of
head h), so a transpose is all they need. Norms have no bias; the checkpoint stores those as empty
nodes, which the reader skips.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from lightning_ttt.config import ModelConfig

PREFIX = "language_model.model."


@dataclass(frozen=True)
class Rule:
    ours: str  # our parameter name; ``{i}`` is the block index
    stacked: str | None  # None, "blocks" (axis 0 = block i) or "suffix" (axis 0 = s, block L - S + s)
    transpose: bool  # an [in, out] matrix that becomes our [out, in]


RULES: dict[str, Rule] = {
    "wte.weight": Rule("embed.weight", None, False),
    "ln_f.weight": Rule("final_norm.weight", None, False),
    **{f"h.blocks.seq_modeling_block.{w}.weight": Rule(f"blocks.{{i}}.attn.{w}.weight", "blocks", True)
       for w in ("wq", "wk", "wv", "wo")},
    **{f"h.blocks.seq_modeling_block.{n}.weight": Rule(f"blocks.{{i}}.attn.{n}.weight", "blocks", False)
       for n in ("q_norm", "k_norm")},
    **{f"h.blocks.{n}.weight": Rule(f"blocks.{{i}}.{n}.weight", "blocks", False)
       for n in ("seq_norm", "seq_post_norm", "ffn_norm", "ffn_post_norm")},
    **{f"h.blocks.feed_forward.{w}.weight": Rule(f"blocks.{{i}}.mlp.{w}.weight", "blocks", True)
       for w in ("w1", "w2", "w3")},
    **{f"h.prime_storage.feed_forward_prime.{w}.weight": Rule(f"blocks.{{i}}.prime.{w}.weight", "suffix", True)
       for w in ("w1", "w2", "w3")},
    "h.prime_storage.ffn_prime_norm.weight": Rule("blocks.{i}.prime_norm.weight", "suffix", False),
    "h.prime_storage.ffn_prime_post_norm.weight": Rule("blocks.{i}.prime_post_norm.weight", "suffix", False),
}


def rules_for(cfg: ModelConfig) -> dict[str, Rule]:
    """The authors' full array names this architecture stores -> their rule (prime storage for e2e only)."""
    return {PREFIX + name: rule for name, rule in RULES.items() if rule.stacked != "suffix" or cfg.has_prime}


def _blocks(rule: Rule, cfg: ModelConfig) -> list[int]:
    if rule.stacked == "blocks":
        return list(range(cfg.n_layers))
    if rule.stacked == "suffix":
        return list(range(cfg.prefix_len, cfg.n_layers))
    return []


def expected_shapes(cfg: ModelConfig, our_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The shape of every array the authors' checkpoint holds for ``cfg``, derived from ``our_shapes``
    (our state dict's shapes); raises if the rules and our parameters do not cover each other."""
    shapes, covered = {}, set()
    for name, rule in rules_for(cfg).items():
        blocks = _blocks(rule, cfg)
        ours = [rule.ours.format(i=i) for i in blocks] if rule.stacked else [rule.ours]
        covered.update(ours)
        one = tuple(our_shapes[ours[0]])
        one = one[::-1] if rule.transpose else one
        shapes[name] = (len(blocks), *one) if rule.stacked else one
    if covered != set(our_shapes):
        raise RuntimeError(f"the JAX name mapping does not cover our parameters {sorted(set(our_shapes) - covered)}")
    return shapes


def to_ours(name: str, array: np.ndarray, cfg: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
    """One of their arrays -> (our name, our array) for every block it holds; each result is its own copy."""
    rule = rules_for(cfg)[name]
    if not rule.stacked:
        yield rule.ours, np.array(array.T if rule.transpose else array, order="C")
        return
    for slot, block in enumerate(_blocks(rule, cfg)):
        piece = array[slot]  # [in, out] or [dim]
        yield rule.ours.format(i=block), np.array(piece.T if rule.transpose else piece, order="C")


def to_authors(state: Mapping[str, np.ndarray], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Our state dict (numpy arrays) in the authors' names and layouts: the inverse of ``to_ours``."""
    arrays = {}
    for name, rule in rules_for(cfg).items():
        fix = (lambda a: a.T) if rule.transpose else (lambda a: a)
        if rule.stacked:
            arrays[name] = np.stack([fix(state[rule.ours.format(i=i)]) for i in _blocks(rule, cfg)])  # [n, ...]
        else:
            arrays[name] = np.ascontiguousarray(fix(state[rule.ours]))
    return arrays
