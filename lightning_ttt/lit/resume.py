"""Resuming with ``--ckpt_path``: the config given describes the run, and the checkpoint must hold that
model (architecture, method, tokenizer vocabulary); run settings such as ``trainer.max_steps`` follow
the config."""

from __future__ import annotations

from lightning_ttt.config import ModelConfig
from lightning_ttt.infer.loading import config_from_hparams, read_checkpoint
from lightning_ttt.lit.module import TTTLanguageModel

# ckpt_path values Lightning resolves itself (no file to look at here)
LIGHTNING_CKPT_NAMES = frozenset({"last", "best", "hpc", "registry"})


def setting_name(field: str) -> str:
    """The CLI key of a ``ModelConfig`` field."""
    return "model.method" if field == "method" else f"model.config.{field}"


def model_differences(ours: ModelConfig, theirs: ModelConfig) -> list[str]:
    """Fields in which a checkpoint's model (``theirs``) is not the configured one: the architecture
    (``ModelConfig.architecture_differences``) and the method (fa and swa included: resuming continues
    a run, it does not change its method)."""
    diffs = ours.architecture_differences(theirs)
    if ours.method != theirs.method and "method" not in diffs:
        diffs.insert(0, "method")
    return diffs


def check_resume(ckpt_path: str, module: TTTLanguageModel) -> None:
    """A one-line ``ValueError`` (``OSError`` for a missing file) unless ``ckpt_path`` is a readable
    lightning_ttt checkpoint of ``module``'s model."""
    if ckpt_path in LIGHTNING_CKPT_NAMES or ckpt_path.startswith("registry:") or "://" in ckpt_path:
        return
    try:
        ckpt, hp = read_checkpoint(ckpt_path, mmap=True)
        module.on_load_checkpoint(ckpt)  # the vocabulary and BOS/EOS checks Lightning would run later
        theirs = config_from_hparams(hp, ckpt_path)
    except FileNotFoundError:
        raise FileNotFoundError(f"--ckpt_path={ckpt_path}: no such checkpoint file") from None
    except ValueError as err:
        raise ValueError(f"--ckpt_path={ckpt_path}: {err}") from None
    diffs = model_differences(module.cfg, theirs)
    if diffs:
        detail = ", ".join(f"{setting_name(name)}={getattr(module.cfg, name)!r} (checkpoint: "
                           f"{getattr(theirs, name)!r})" for name in diffs)
        raise ValueError(f"--ckpt_path={ckpt_path}: the checkpoint holds another model than the config: {detail}; "
                         "give the config it was trained with, or start a new run from its weights with "
                         "model.init_from")
