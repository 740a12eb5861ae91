"""``ttt import-jax``: the authors' orbax checkpoint -> an exported model directory (as ``ttt export``).

The architecture comes from a preset (by default from a released root's name, e.g.
``125m_ttt_e2e_pretrain_dclm_8k_1x_cc`` -> ``125m``) or from a file with the authors' model keys.
Every stored array is checked by name and shape against that architecture before anything is read
or written; then the arrays are read one at a time, split per block and transposed into our
layout, and written as ``model.safetensors`` + ``config.json`` (atomically). Memory: one copy of
the weights plus the largest stacked array being converted.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm import tqdm

from lightning_ttt.config import LLAMA3_TOKENIZER, LLAMA3_VOCAB, PRESETS, ModelConfig
from lightning_ttt.convert.authors_config import read_authors_config
from lightning_ttt.convert.jax_names import PREFIX, expected_shapes, to_ours
from lightning_ttt.convert.orbax import StoredArray, model_weights_dir, open_item
from lightning_ttt.infer.export import export_model
from lightning_ttt.infer.loading import fitting_tokenizer
from lightning_ttt.model.transformer import Transformer

RELEASED_PRESETS = tuple(name for name in PRESETS if name != "debug")


def preset_from_root(root: str | Path) -> str:
    """The preset a released root's name starts with (``1b_ttt_e2e_finetune_books_8k_1x_cc`` -> ``1b``)."""
    path = Path(root).resolve()
    name = path.parent.name if path.name.isdigit() else path.name  # a step directory: its root's name
    head = name.split("_")[0].lower()
    if head in RELEASED_PRESETS:
        return head
    raise ValueError(f"cannot tell the architecture of {name!r} from its name (released roots start with "
                     f"{', '.join(p + '_' for p in RELEASED_PRESETS)}); pass --preset NAME or --config FILE")


def resolve_architecture(root: str | Path, preset: str | None = None, config: str | Path | None = None) -> ModelConfig:
    if preset is not None and config is not None:
        raise ValueError("give --preset or --config, not both")
    if config is not None:
        return read_authors_config(config)
    preset = preset or preset_from_root(root)
    if preset not in RELEASED_PRESETS:
        raise ValueError(f"--preset {preset!r} is unknown; expected one of {', '.join(RELEASED_PRESETS)}")
    return ModelConfig.from_preset(preset, "e2e")


def default_tokenizer(cfg: ModelConfig) -> str | None:
    """The Llama-3 tokenizer for a model with its vocabulary (the released ones); otherwise unknown."""
    ids = {"vocab_size": cfg.vocab_size, "bos_id": cfg.bos_id, "eos_id": cfg.eos_id}
    return LLAMA3_TOKENIZER if ids == LLAMA3_VOCAB else None


def check_arrays(stored: dict[str, StoredArray], expected: dict[str, tuple[int, ...]], cfg: ModelConfig,
                 where: Path) -> None:
    """One-line error naming the first missing, unexpected or mis-shaped array."""
    arch = (f"{cfg.name}: {cfg.n_layers} layers, d {cfg.d_model}, {cfg.n_heads} heads, MLP {cfg.mlp_hidden}, "
            f"{cfg.suffix_len} TTT blocks, vocab {cfg.vocab_size}")
    missing = [name for name in expected if name not in stored]
    if missing:
        raise ValueError(f"{where} lacks the array {missing[0]} that the architecture ({arch}) needs"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = sorted(set(stored) - set(expected))
    if extra:
        raise ValueError(f"{where} holds the array {extra[0]} that the architecture ({arch}) does not have"
                         + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    for name, shape in expected.items():
        if stored[name].shape != shape:
            raise ValueError(f"{where}: array {name} has shape {list(stored[name].shape)}, the architecture ({arch}) "
                             f"needs {list(shape)}")
        if stored[name].dtype.kind != "f" and str(stored[name].dtype) != "bfloat16":
            raise ValueError(f"{where}: array {name} has dtype {stored[name].dtype}; expected floating point")


def import_jax(root: str | Path, out: str | Path, preset: str | None = None, config: str | Path | None = None,
               step: int | None = None, tokenizer: str | None = None, progress: bool = True) -> Path:
    """Convert ``root``'s latest (or ``step``) ``model_weights`` into the exported directory ``out``.

    Weights are stored in float32 (the authors keep their parameters in fp32). ``tokenizer`` is
    recorded in ``config.json``; by default the Llama-3 tokenizer for a Llama-3 vocabulary, else none.
    """
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"--out {out} already exists; choose a new directory")
    cfg = resolve_architecture(root, preset, config)
    if tokenizer is not None and (tokenizer == "bytes" or Path(tokenizer).expanduser().exists()):
        fitting_tokenizer(tokenizer, cfg)  # local ones only: a hub name may need a login
    item = model_weights_dir(root, step)
    stored = open_item(item)
    with torch.device("meta"):  # shapes only: no memory for weights
        model = Transformer(cfg)
    expected = expected_shapes(cfg, {name: tuple(t.shape) for name, t in model.state_dict().items()})
    check_arrays(stored, expected, cfg, item)
    state: dict[str, torch.Tensor] = {}
    total = sum(math.prod(shape) * 4 for shape in expected.values())  # bytes of float32 weights
    with tqdm(total=total, desc=f"import {Path(root).name}", unit="B", unit_scale=True, disable=not progress) as bar:
        for name, shape in expected.items():
            bar.set_postfix_str(name[len(PREFIX):], refresh=False)
            array = stored[name].read().astype("float32", copy=False)
            for ours, piece in to_ours(name, array, cfg):
                state[ours] = torch.from_numpy(piece)
            del array  # the stacked original; its per-block copies live on in ``state``
            bar.update(math.prod(shape) * 4)
    model.load_state_dict(state, assign=True)  # the tensors become the parameters, no copy
    return export_model(model, out, tokenizer if tokenizer is not None else default_tokenizer(cfg))
