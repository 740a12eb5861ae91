"""Paper recipes carry §1.9's numbers; extension weights-only init; sharded strategies are refused for meta-training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from lightning_ttt.config import ModelConfig
from lightning_ttt.lit.module import TTTLanguageModel, check_strategy, load_weights

PAPER = Path(__file__).resolve().parents[2] / "recipes" / "paper"
# size -> (pretrain tokens per step, steps, lr, extension steps)  [paper.md §1.9]
TABLE = {"125m": (524_288, 4800, 3e-3, 120), "350m": (524_288, 13500, 1.5e-3, 337),
         "760m": (524_288, 29000, 1.25e-3, 725), "1b": (524_288, 50000, 1e-3, 1250),
         "3b": (1_048_576, 52000, 8e-4, 1300)}
THETA = {16: 1e6, 32: 2e6, 64: 5e6, 128: 1e7}


def _tokens(spec: dict) -> int:
    t = spec["trainer"]
    return t["devices"] * t["num_nodes"] * t["accumulate_grad_batches"] * spec["data"]["batch_size"] * spec["data"]["seq_len"]


@pytest.mark.parametrize("size", list(TABLE))
@pytest.mark.parametrize("method", ["fa", "swa", "e2e"])
def test_recipes_carry_the_paper_numbers(size: str, method: str) -> None:
    tokens, steps, lr, ext_steps = TABLE[size]
    pre = yaml.safe_load((PAPER / f"pretrain-{size}-{method}.yaml").read_text())
    assert (_tokens(pre), pre["trainer"]["max_steps"], pre["model"]["lr"]) == (tokens, steps, lr)
    assert pre["trainer"]["precision"] == "bf16-mixed" and pre["model"]["warmup_fraction"] == 0.1
    config = pre["model"]["config"] or {}
    if method == "e2e":
        assert config["ilr_init"] == 0.1 and config["ilr_warmup_steps"] == steps // 10
    for k, theta in THETA.items():
        ext = yaml.safe_load((PAPER / f"ext-{size}-{method}-{k}K.yaml").read_text())
        assert ext["data"]["seq_len"] == k * 1024 and _tokens(ext) == 2 * tokens
        assert ext["trainer"]["max_steps"] == ext_steps and ext["model"]["lr"] == 4e-4
        assert ext["model"]["init_from"].startswith(f"runs/pretrain-{size}-{method}/")
        assert (ext["model"]["config"] or {}).get("rope_theta") == (theta if method == "fa" else None)


def test_init_from_loads_weights_only_with_strict_checks(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = TTTLanguageModel(method="e2e", seq_len=64)
    path = tmp_path / "pre.ckpt"
    torch.save({"state_dict": source.state_dict(), "global_step": 7}, path)
    target = TTTLanguageModel(method="e2e", seq_len=64)
    load_weights(target, str(path))
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value)
    with pytest.raises(ValueError, match="keys differ"):
        load_weights(TTTLanguageModel(method="fa", seq_len=64), str(path))
    with pytest.raises(ValueError, match=r"has shape .* the checkpoint is for another size"):
        load_weights(TTTLanguageModel(method="e2e", seq_len=64, config={"mlp_hidden": 256}), str(path))
    with pytest.raises(ValueError, match="no such checkpoint"):
        load_weights(target, str(tmp_path / "missing.ckpt"))


class DeepSpeedStrategy:  # stands in for Lightning's (deepspeed is GPU-only and not installed here)
    def __init__(self, stage: int) -> None:
        self.config = {"zero_optimization": {"stage": stage}}


def test_sharded_strategies_are_refused_for_meta_training() -> None:
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    e2e = ModelConfig.from_preset("debug", "e2e")
    for strategy in ("fsdp", "fsdp_cpu_offload", "deepspeed_stage_3", "deepspeed_stage_3_offload", FSDPStrategy(),
                     DeepSpeedStrategy(3)):
        with pytest.raises(ValueError, match="cannot train method=e2e with meta-learning"):
            check_strategy(strategy, e2e)
    for strategy in ("ddp", "auto", "deepspeed_stage_2", DeepSpeedStrategy(2), DDPStrategy()):
        check_strategy(strategy, e2e)
    check_strategy("fsdp", ModelConfig.from_preset("debug", "fa"))  # first-order methods may shard
    check_strategy("fsdp", e2e.replace(meta_learning=False))


def test_setup_refuses_the_strategy_and_loads_init_from(tmp_path: Path) -> None:
    from types import SimpleNamespace

    torch.manual_seed(0)
    source = TTTLanguageModel(method="e2e", seq_len=64)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "pre.ckpt")
    model = TTTLanguageModel(method="e2e", seq_len=64, init_from=str(tmp_path / "pre.ckpt"))
    model._trainer = SimpleNamespace(strategy="fsdp", ckpt_path=None)
    with pytest.raises(ValueError, match="trainer.strategy=fsdp cannot train"):
        model.setup("fit")
    model._trainer = SimpleNamespace(strategy="ddp", ckpt_path=None)
    model.setup("fit")
    assert torch.equal(model.model.embed.weight, source.model.embed.weight)
