"""Model configuration: one validated dataclass and the named presets.

A preset fixes the architecture (layers, width, heads, MLP widths, TTT block count);
the method picks how sequences are modelled:

* ``fa``  — full causal attention (the baseline);
* ``swa`` — sliding-window attention of ``window`` tokens;
* ``e2e`` — sliding-window attention plus test-time training of the prime MLPs in the
  last ``suffix_len`` blocks, one SGD step per mini-batch of ``mini_batch`` tokens.
  With ``meta_learning=False`` this is the paper's "TTT-naive" ablation: the prime MLPs
  train as ordinary weights and TTT runs only at evaluation.

Sizes come from the paper's Table 3 and the authors' configs (``reference/paper.md`` §1.3).

The architecture options of pretrained Llama-family models (grouped-query attention, half-split
RoPE with Llama-3 frequency scaling, pre-norm only, no QK-norm, an untied head, q/k/v biases, an
explicit head width) exist for warm starts (``ttt convert-hf``); each is off by default, so the
defaults are the paper's architecture.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

Method = Literal["fa", "swa", "e2e"]
METHODS: tuple[str, ...] = ("fa", "swa", "e2e")
AttentionKernel = Literal["auto", "sdpa", "flash_attn", "explicit"]
ATTENTION_KERNELS: tuple[str, ...] = typing.get_args(AttentionKernel)
# An exported model directory (``ttt export``, ``ttt import-jax``): these two files (and
# the tokenizer.json that ``ttt convert-hf`` copies beside them).
EXPORT_FORMAT = "lightning_ttt.export/1"
EXPORT_CONFIG, EXPORT_WEIGHTS = "config.json", "model.safetensors"
# Settings a run may change when it starts from saved weights (context extension, inner optimiser,
# execution policies); every other field defines what the weights compute and must match.
RUN_SETTINGS = frozenset({"window", "mini_batch", "rope_theta", "inner_lr", "inner_clip", "ilr_init",
                          "ilr_warmup_steps", "meta_learning", "attention_kernel", "checkpoint_chunks",
                          "checkpoint_blocks", "offload_block_inputs", "init_std", "name"})
SAME_WEIGHTS_METHODS = frozenset({"fa", "swa"})  # one set of weights, two attention spans
RopeLayout = Literal["interleaved", "half"]
ROPE_LAYOUTS: tuple[str, ...] = typing.get_args(RopeLayout)
RopeScaling = Literal["none", "llama3"]
ROPE_SCALINGS: tuple[str, ...] = typing.get_args(RopeScaling)
# Checkpointing through time of the e2e inner loop (lightning_ttt.ttt.schedule): none, every chunk,
# two levels (~2·sqrt(T/b) states kept) or recursive bisection (~log2(T/b) states kept).
CheckpointSchedule = Literal["none", "each", "sqrt", "log"]
CHECKPOINT_SCHEDULES: tuple[str, ...] = typing.get_args(CheckpointSchedule)

# Llama-3 tokenizer ids used by every paper size (and by the authors' released models).
LLAMA3_VOCAB = dict(vocab_size=128256, bos_id=128000, eos_id=128001)
LLAMA3_TOKENIZER = "meta-llama/Meta-Llama-3-8B"  # gated on the Hugging Face hub
_PAPER_GEOMETRY = dict(window=8192, mini_batch=1024, rope_theta=500_000.0)

# name -> architecture; mlp_hidden is the full-attention width, mlp_hidden_e2e the reduced
# width the e2e model uses for all its MLPs so that the parameter counts stay equal.
PRESETS: dict[str, dict[str, Any]] = {
    "debug": dict(
        n_layers=4, d_model=128, n_heads=4, mlp_hidden=384, mlp_hidden_e2e=320, suffix_len=1,
        vocab_size=258, bos_id=256, eos_id=257, window=128, mini_batch=32, rope_theta=10_000.0,
    ),
    "125m": dict(n_layers=12, d_model=768, n_heads=12, mlp_hidden=2048, mlp_hidden_e2e=1664,
                 suffix_len=3, **LLAMA3_VOCAB, **_PAPER_GEOMETRY),
    "350m": dict(n_layers=24, d_model=1024, n_heads=16, mlp_hidden=2816, mlp_hidden_e2e=2304,
                 suffix_len=6, **LLAMA3_VOCAB, **_PAPER_GEOMETRY),
    "760m": dict(n_layers=24, d_model=1536, n_heads=16, mlp_hidden=4096, mlp_hidden_e2e=3328,
                 suffix_len=6, **LLAMA3_VOCAB, **_PAPER_GEOMETRY),
    "1b": dict(n_layers=24, d_model=2048, n_heads=32, mlp_hidden=5376, mlp_hidden_e2e=4352,
               suffix_len=6, **LLAMA3_VOCAB, **_PAPER_GEOMETRY),
    "3b": dict(n_layers=32, d_model=2560, n_heads=32, mlp_hidden=6912, mlp_hidden_e2e=5632,
               suffix_len=8, **LLAMA3_VOCAB, **_PAPER_GEOMETRY),
}


@dataclass
class ModelConfig:
    """Architecture, method and inner-loop settings of one model. Validated on construction.

    The recipe's ``model.config`` sets any of these fields (except ``method`` and ``name``); the
    rest come from ``model.preset`` and, for the vocabulary, from ``data.tokenizer``.

    Attributes:
        method: fa (full attention), swa (sliding window) or e2e (sliding window + test-time training).
        vocab_size: Vocabulary size; at least the tokenizer's (a larger value pads the embedding).
        d_model: Model width.
        n_layers: Number of Transformer blocks.
        n_heads: Attention heads; the head dimension d_model / n_heads must be even.
        mlp_hidden: Hidden width of every SwiGLU MLP (e2e presets use a smaller one to match parameter counts).
        suffix_len: Number of last blocks with a prime (fast-weight) MLP; 0 for fa and swa.
        window: Sliding-window size k in tokens (fa has no window and ignores it).
        mini_batch: TTT mini-batch b: tokens per inner SGD step and per loss chunk.
        rope_theta: RoPE base theta.
        norm_eps: RMSNorm epsilon.
        n_kv_heads: Key/value heads of grouped-query attention (must divide n_heads); null: n_heads.
        head_dim_override: Width of one attention head when it is not d_model / n_heads (Qwen3); null: d_model / n_heads.
        rope_layout: RoPE pairs: interleaved (2j, 2j+1), the paper's; or half (j, j + head_dim/2), Hugging Face Llama's.
        rope_scaling: none, or llama3 (Llama 3.1's frequency-dependent RoPE scaling, set by the four rope_* below).
        rope_factor: llama3 scaling: long wavelengths are stretched by this factor.
        rope_low_freq_factor: llama3 scaling: wavelengths above rope_original_max_positions / this are fully scaled.
        rope_high_freq_factor: llama3 scaling: wavelengths below rope_original_max_positions / this are kept.
        rope_original_max_positions: llama3 scaling: the context length before scaling.
        post_norm: RMSNorm on every sublayer's output before the residual add (sandwich norm); false: pre-norm only.
        qk_norm: RMSNorm on each query and key head before RoPE.
        tie_embeddings: The output head is the embedding matrix; false: a separate lm_head.
        qkv_bias: Biases on the query, key and value projections (Qwen2).
        prime_hidden: Hidden width of the prime MLPs; null: mlp_hidden.
        bos_id: Beginning-of-document token id; targets equal to it are not scored.
        eos_id: End-of-document token id.
        init_std: Standard deviation of the normal initialisation of the embedding and every linear weight.
        inner_lr: Inner SGD learning rate (after the warm-up).
        inner_clip: Global-norm clip of each inner gradient (all prime MLPs together).
        ilr_init: Inner learning rate at the first outer step of the warm-up.
        ilr_warmup_steps: Outer steps over which the inner learning rate rises from ilr_init to inner_lr (0: none).
        meta_learning: Differentiate through the inner steps in training (false: the TTT-naive ablation).
        attention_kernel: auto, sdpa, flash_attn or explicit; only changes how attention is computed.
        checkpoint_chunks: Checkpointing through time of the e2e inner loop: none, each (recompute each
            mini-batch; keeps T/b states), sqrt (keeps about 2*sqrt(T/b)) or log (keeps about log2(T/b)+1,
            recomputes more); true/false mean each/none.
        checkpoint_blocks: Recompute each whole-sequence block in the backward pass (less memory, more time).
        offload_block_inputs: With checkpoint_blocks, keep each block's saved input in host memory and copy
            it back for the recomputation (no device memory for block inputs; two copies per block and step).
        name: Label used in logs and reports.
    """

    method: Method = "e2e"
    vocab_size: int = 258
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_hidden: int = 320
    suffix_len: int = 1
    window: int = 128
    mini_batch: int = 32
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    # Options of pretrained families (Llama, Qwen, Mistral); the defaults are the paper's architecture.
    n_kv_heads: int | None = None
    head_dim_override: int | None = None
    rope_layout: RopeLayout = "interleaved"
    rope_scaling: RopeScaling = "none"
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_positions: int = 8192
    post_norm: bool = True
    qk_norm: bool = True
    tie_embeddings: bool = True
    qkv_bias: bool = False
    prime_hidden: int | None = None
    bos_id: int = 256
    eos_id: int = 257
    init_std: float = 0.02
    # Inner loop (e2e only): SGD with global-norm clipping, lr warm-up over outer steps.
    inner_lr: float = 1.0
    inner_clip: float = 1.0
    ilr_init: float = 1.0
    ilr_warmup_steps: int = 0
    meta_learning: bool = True
    # Execution policies (do not change the function computed).
    attention_kernel: AttentionKernel = "auto"
    checkpoint_chunks: CheckpointSchedule | bool = "none"  # a bool (older recipes) becomes each / none
    checkpoint_blocks: bool = False
    offload_block_inputs: bool = False
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.checkpoint_chunks, bool):
            self.checkpoint_chunks = "each" if self.checkpoint_chunks else "none"
        problems = list(self._problems())
        if problems:
            raise ValueError(f"invalid model config ({self.name}): " + "; ".join(problems))

    def _problems(self):
        if self.method not in METHODS:
            yield f"method={self.method!r} is unknown; expected one of {', '.join(METHODS)}"
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "mlp_hidden", "window", "mini_batch"):
            if int(getattr(self, name)) < 1:
                yield f"{name}={getattr(self, name)} must be >= 1"
        yield from self._attention_problems()
        if self.method == "e2e":
            if not 1 <= self.suffix_len < self.n_layers:
                yield (f"suffix_len={self.suffix_len} must be in [1, n_layers-1={self.n_layers - 1}] "
                       "for method e2e (the prefix needs at least one block)")
        elif self.suffix_len != 0:
            yield f"suffix_len={self.suffix_len} must be 0 for method {self.method} (no prime MLPs)"
        if self.attention_window is not None and self.window < self.mini_batch:
            yield f"window k={self.window} must be >= mini_batch b={self.mini_batch} (the paper requires k >= b)"
        for name in ("bos_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                yield f"{name}={getattr(self, name)} must be a token id below vocab_size={self.vocab_size}"
        if self.inner_lr <= 0 or self.inner_clip <= 0:
            yield f"inner_lr={self.inner_lr} and inner_clip={self.inner_clip} must be > 0"
        if self.ilr_warmup_steps < 0:
            yield f"ilr_warmup_steps={self.ilr_warmup_steps} must be >= 0"
        if self.attention_kernel not in ATTENTION_KERNELS:
            yield (f"attention_kernel={self.attention_kernel!r} is unknown; "
                   f"expected one of {', '.join(ATTENTION_KERNELS)}")
        if self.checkpoint_chunks not in CHECKPOINT_SCHEDULES:
            yield (f"checkpoint_chunks={self.checkpoint_chunks!r} is unknown; expected one of "
                   f"{', '.join(CHECKPOINT_SCHEDULES)} (or true/false for each/none)")
        if self.offload_block_inputs and not self.checkpoint_blocks:
            yield "offload_block_inputs=true needs checkpoint_blocks=true (it offloads the inputs that checkpointing keeps)"
        if self.prime_hidden is not None and self.prime_hidden < 1:
            yield f"prime_hidden={self.prime_hidden} must be >= 1 (or None for mlp_hidden)"
        if self.norm_eps <= 0:
            yield f"norm_eps={self.norm_eps} must be > 0"

    def _attention_problems(self):
        heads = max(self.n_heads, 1)
        if self.head_dim_override is None:
            if self.d_model % heads:
                yield f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}"
            elif (self.d_model // heads) % 2:
                yield f"head dim d_model/n_heads={self.d_model // heads} must be even for RoPE"
        elif self.head_dim_override < 2 or self.head_dim_override % 2:
            yield f"head_dim_override={self.head_dim_override} must be an even number >= 2 (RoPE rotates pairs)"
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or heads % self.n_kv_heads):
            yield f"n_kv_heads={self.n_kv_heads} must be >= 1 and divide n_heads={self.n_heads}"
        if self.rope_layout not in ROPE_LAYOUTS:
            yield f"rope_layout={self.rope_layout!r} is unknown; expected one of {', '.join(ROPE_LAYOUTS)}"
        if self.rope_scaling not in ROPE_SCALINGS:
            yield f"rope_scaling={self.rope_scaling!r} is unknown; expected one of {', '.join(ROPE_SCALINGS)}"
        elif self.rope_scaling == "llama3":
            if self.rope_factor <= 0 or self.rope_original_max_positions < 1:
                yield (f"rope_factor={self.rope_factor} and rope_original_max_positions="
                       f"{self.rope_original_max_positions} must be > 0 for rope_scaling=llama3")
            if not 0 < self.rope_low_freq_factor < self.rope_high_freq_factor:
                yield (f"rope_low_freq_factor={self.rope_low_freq_factor} must be > 0 and below "
                       f"rope_high_freq_factor={self.rope_high_freq_factor} for rope_scaling=llama3")

    # ------------------------------------------------------------------ derived
    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads: ``n_kv_heads``, or ``n_heads`` without grouped-query attention."""
        return self.n_kv_heads or self.n_heads

    @property
    def prime_width(self) -> int:
        return self.prime_hidden or self.mlp_hidden

    @property
    def attention_window(self) -> int | None:
        """Keys each query sees: ``window``, or None (the whole causal prefix) for full attention."""
        return None if self.method == "fa" else self.window

    @property
    def has_prime(self) -> bool:
        """True when the last ``suffix_len`` blocks carry prime (fast-weight) MLPs."""
        return self.method == "e2e"

    @property
    def prefix_len(self) -> int:
        return self.n_layers - self.suffix_len

    @property
    def ttt_in_training(self) -> bool:
        return self.method == "e2e" and self.meta_learning

    def check_seq_len(self, seq_len: int, setting: str = "seq_len") -> None:
        """Raise a one-line error when ``seq_len`` does not split into mini-batches of b tokens."""
        if seq_len < 1:
            raise ValueError(f"{setting}={seq_len} must be >= 1")
        if seq_len % self.loss_chunk(seq_len):
            raise ValueError(f"{setting}={seq_len} must be a multiple of the mini-batch size "
                             f"b={self.mini_batch} (model.config.mini_batch)")

    def loss_chunk(self, seq_len: int) -> int:
        """Tokens per loss chunk: b, or the whole sequence when it is shorter than b."""
        return min(self.mini_batch, seq_len)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def architecture_differences(self, other: ModelConfig) -> list[str]:
        """Fields outside ``RUN_SETTINGS`` whose values differ (fa and swa count as one method: they
        share their weights)."""
        diffs = []
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            same_weights = f.name == "method" and {mine, theirs} <= SAME_WEIGHTS_METHODS
            if f.name in RUN_SETTINGS or mine == theirs or same_weights:
                continue
            diffs.append(f.name)
        return diffs

    # ------------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, preset: str | None = "debug", method: Method = "e2e", **overrides: Any) -> ModelConfig:
        """Build the named preset for ``method``; ``overrides`` replace single fields.

        ``preset`` may also be an exported model directory: its ``config.json`` supplies the
        architecture (``method`` must be its method, or fa/swa for the other of the two). ``None``
        starts from the dataclass defaults, so ``overrides`` should then give the whole architecture.
        """
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
        if preset is None:
            arch: dict[str, Any] = {}
        elif preset not in PRESETS and (Path(preset) / EXPORT_CONFIG).is_file():
            arch = cls.from_exported(preset).to_dict()
            if arch["method"] != method and {arch["method"], method} - SAME_WEIGHTS_METHODS:
                raise ValueError(f"model.method={method} but the exported model {preset} is method {arch['method']}")
        elif preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)} "
                             "or an exported model directory")
        else:
            arch = dict(PRESETS[preset], name=f"{preset}-{method}")
            width_e2e = arch.pop("mlp_hidden_e2e")
            suffix = arch.pop("suffix_len")
            if method == "e2e":
                arch.update(mlp_hidden=width_e2e, suffix_len=suffix)
            else:
                arch.update(suffix_len=0)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown model setting(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
        return cls(**{**arch, "method": method, **overrides})

    @classmethod
    def from_settings(cls, preset: str | None, method: Method, overrides: Mapping[str, Any] | None = None, *,
                      vocab_size: int | None = None, bos_id: int | None = None,
                      eos_id: int | None = None) -> ModelConfig:
        """The model of the recipe settings ``model.preset``, ``model.method`` and ``model.config``.

        ``vocab_size``, ``bos_id`` and ``eos_id`` are the tokenizer's (``data.tokenizer``); they replace the
        preset's. ``overrides`` may pad ``vocab_size`` above the tokenizer's but not contradict its ids;
        ``None`` values in ``overrides`` mean "not set".
        """
        merged = {k: v for k, v in (overrides or {}).items() if v is not None}
        if vocab_size is not None:
            padded = merged.setdefault("vocab_size", vocab_size)
            if padded < vocab_size:
                raise ValueError(f"model.config.vocab_size={padded} is smaller than the tokenizer's vocabulary "
                                 f"({vocab_size} ids, data.tokenizer); remove it or raise it")
        for name, value in (("bos_id", bos_id), ("eos_id", eos_id)):
            if value is not None and merged.setdefault(name, value) != value:
                raise ValueError(f"model.config.{name}={merged[name]} contradicts the tokenizer's {name}={value} "
                                 "(data.tokenizer); remove it from model.config")
        return cls.from_preset(preset, method, **merged)

    @classmethod
    def from_exported(cls, path: str | Path) -> ModelConfig:
        """The model config recorded in an exported directory's ``config.json``."""
        settings = read_export_meta(path)["model"]
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{Path(path) / EXPORT_CONFIG} has model settings this version does not know: "
                             f"{', '.join(unknown)}")
        return cls(**settings)


def read_export_meta(path: str | Path) -> dict[str, Any]:
    """``config.json`` of an exported model directory: ``{"format", "model": {...}, "tokenizer"}``."""
    file = Path(path) / EXPORT_CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not an exported model directory (no {EXPORT_CONFIG})")
    try:
        meta = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{file} is not readable JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{file} has format {found!r}; expected {EXPORT_FORMAT!r}")
    if not isinstance(meta.get("model"), dict):
        raise ValueError(f"{file} has no `model` settings")
    return meta


# ---------------------------------------------------------------------- the recipe's `model.config`
TOKENIZER_FIELDS = ("vocab_size", "bos_id", "eos_id")  # follow data.tokenizer unless set
NOT_SETTINGS = ("method", "name")  # model.method chooses the method; the name is derived


def _field_helps() -> dict[str, str]:
    """One-line help of each ``ModelConfig`` field from its docstring; empty without ``docstring_parser`` (a
    jsonargparse dependency: the model, inner loop and inference run with torch alone, e.g. benchmarks/gpu.py)."""
    try:
        from docstring_parser import parse
    except ImportError:
        return {}
    return {p.arg_name: " ".join((p.description or "").split()) for p in parse(ModelConfig.__doc__ or "").params}


def _settings_class() -> type:
    """``ModelSettings``: every ``ModelConfig`` field but ``method`` and ``name``, optional (None: the
    preset's value, or the tokenizer's), with the same one-line help. Derived, so new fields appear
    in ``ttt fit --help`` and ``--print_config`` without a second list to keep in sync."""
    hints = typing.get_type_hints(ModelConfig)
    debug = ModelConfig.from_preset("debug", "e2e")
    helps = _field_helps()
    names = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in NOT_SETTINGS]
    lines = []
    for name in names:
        default = "the tokenizer's" if name in TOKENIZER_FIELDS else f"the preset's (debug e2e: {getattr(debug, name)})"
        lines.append(f"        {name}: {helps.get(name, '')} Default: {default}.")
    cls = dataclasses.make_dataclass("ModelSettings", [(n, Optional[hints[n]], dataclasses.field(default=None))
                                                        for n in names])
    cls.__module__ = __name__
    cls.__doc__ = ("Settings of ``ModelConfig`` that a recipe may set (``model.config``); unset ones (null) "
                   "come from the preset.\n\n    Attributes:\n" + "\n".join(lines) + "\n")
    return cls


ModelSettings = _settings_class()


def settings_dict(settings: Any) -> dict[str, Any]:
    """The fields a ``ModelSettings`` (or a plain mapping of them) sets: a plain dict without None values."""
    if settings is None:
        return {}
    items = dataclasses.asdict(settings).items() if dataclasses.is_dataclass(settings) else dict(settings).items()
    return {k: v for k, v in items if v is not None}


def resolved_settings(preset: str, method: str, settings: Any) -> dict[str, Any]:
    """Every ``model.config`` field with the value the model will use (tokenizer fields stay as given)."""
    given = settings_dict(settings)
    cfg = ModelConfig.from_settings(preset, method, given)
    return {f.name: given.get(f.name) if f.name in TOKENIZER_FIELDS else getattr(cfg, f.name)
            for f in dataclasses.fields(ModelSettings)}
