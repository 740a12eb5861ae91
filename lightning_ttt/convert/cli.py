"""``ttt import-jax``: the typed command around ``import_jax`` (options come from the signature and docstring)."""

from __future__ import annotations

from typing import Literal

from lightning_ttt.convert.jax_import import import_jax

Preset = Literal["125m", "350m", "760m", "1b", "3b"]


def import_jax_command(root: str, /, *, out: str, preset: Preset | None = None, config: str | None = None,
                       step: int | None = None, tokenizer: str | None = None, progress: bool = True) -> int:
    """Convert a checkpoint of the authors' JAX code (orbax, e.g. a released TTT-E2E model) into an exported
    model directory (safetensors + config.json, like `ttt export`).

    Args:
        root: checkpoint root holding integer step directories (e.g. 125m_ttt_e2e_pretrain_dclm_8k_1x_cc/), or
            one step directory.
        out: new directory to create.
        preset: architecture preset (default: from the root's name, e.g. 125m_... -> 125m).
        config: YAML/JSON with the authors' `model:` settings (top level or under `config:`), instead of --preset.
        step: step directory to read (default: the largest).
        tokenizer: tokenizer to record (tokenizer.json or hub name; default: the Llama-3 tokenizer for a Llama-3
            vocabulary, otherwise none).
        progress: show a progress bar (--no-progress: do not).
    """
    path = import_jax(root, out, preset=preset, config=config, step=step, tokenizer=tokenizer, progress=progress)
    print(f"imported {root} to {path}")
    return 0
