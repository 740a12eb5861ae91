"""Tiny random Hugging Face models (Llama, Qwen2, Qwen3, Mistral) saved as checkpoint directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the .[hf] extra (transformers) is not installed")

VOCAB, BOS, EOS = 300, 1, 2
WORDS = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far"]
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, bos_token_id=BOS, eos_token_id=EOS, rms_norm_eps=1e-5)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10_000.0, "factor": 4.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}

# kind -> (config class, model class, settings): GQA everywhere; tied + Llama-3 RoPE scaling (llama);
# q/k/v biases (qwen2); head_dim 24 != 64/4 and QK-norm (qwen3); a sliding window of 8 (mistral).
KINDS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=False, rope_parameters={
        "rope_type": "default", "rope_theta": 1_000.0})),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(tie_word_embeddings=False, head_dim=24)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(tie_word_embeddings=False, sliding_window=8)),
}


def randomize(model: torch.nn.Module, std: float = 0.1) -> torch.nn.Module:
    """O(1) norm scales and biases, N(0, std²) matrices: a wrong layout or a dropped term shows clearly."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0, std)
    return model


def hf_model(kind: str, seed: int = 0, **overrides):
    config_class, model_class, settings = KINDS[kind]
    config = getattr(transformers, config_class)(**{**COMMON, **settings, **overrides})
    torch.manual_seed(seed)
    return randomize(getattr(transformers, model_class)(config)).eval()


def word_tokenizer(path: Path) -> Path:
    """A word-level ``tokenizer.json`` with <s>/</s> at the ids of the models' BOS/EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": BOS, "</s>": EOS, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<s>", "</s>"])
    tok.save(str(path))
    return path


def save_hf(kind: str, path: Path, seed: int = 0, tokenizer: bool = True, **save_kwargs):
    """Save a random ``kind`` model (and a tokenizer.json) to ``path``; returns the model."""
    model = hf_model(kind, seed)
    model.save_pretrained(path, **save_kwargs)
    if tokenizer:
        word_tokenizer(path / "tokenizer.json")
    return model


def edit_config(path: Path, **changes) -> None:
    file = path / "config.json"
    config = json.loads(file.read_text())
    config.update(changes)
    file.write_text(json.dumps(config))
