"""The non-finite guard: a diverging run stops naming the step and the quantity (or skips the batch),
never writes a non-finite checkpoint, and non-finite checkpoints do not load for inference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_ttt.cli import main
from lightning_ttt.infer.loading import load_checkpoint
from lightning_ttt.lit.guard import NonFiniteError
from lightning_ttt.lit.module import TTTLanguageModel, load_weights
from lightning_ttt.lit.trainer import TTTTrainer
from lightning_ttt.model.weights import first_non_finite

REPO = Path(__file__).resolve().parents[2]
NAN = float("nan")


class _Batches(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, 256, (65,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids[:-1], "targets": ids[1:], "loss_mask": torch.ones(64, dtype=torch.bool)}


class Poisoned(TTTLanguageModel):
    """Puts a NaN into ``quantity`` at the outer steps in ``steps``."""

    def __init__(self, quantity: str, steps: set[int], **kwargs) -> None:
        super().__init__(method="e2e", seq_len=64, lr=1e-3, **kwargs)
        self.quantity, self.steps = quantity, steps

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if self.global_step not in self.steps:
            return loss
        if self.quantity == "outer loss":
            return loss * NAN
        if self.quantity == "inner gradient norm":
            self.step_quantities["inner gradient norm"] = self.step_quantities["inner gradient norm"].clone()
            self.step_quantities["inner gradient norm"][0, -1] = NAN
        if self.quantity == "fast weights":
            name = next(iter(self.step_quantities["fast weights"]))
            self.step_quantities["fast weights"] = {name: torch.full((2,), float("inf"))}
        return loss

    def on_after_backward(self) -> None:
        if self.quantity == "outer gradient norm" and self.global_step in self.steps:
            next(self.parameters()).grad[0] = NAN


def _fit(module: TTTLanguageModel, root: Path, max_steps: int) -> TTTTrainer:
    torch.manual_seed(0)
    checkpoints = ModelCheckpoint(dirpath=root, every_n_train_steps=1, save_top_k=-1, save_last=True)
    trainer = TTTTrainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[checkpoints], gradient_clip_val=1.0)
    trainer.fit(module, torch.utils.data.DataLoader(_Batches(), batch_size=2))
    return trainer


def _finite_checkpoints(root: Path) -> dict[str, int]:
    """File name -> global step of every checkpoint in ``root``, after checking each holds finite weights."""
    steps = {}
    for path in sorted(root.glob("*.ckpt")):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert first_non_finite(ckpt["state_dict"]) is None, path
        steps[path.name] = ckpt["global_step"]
    return steps


@pytest.mark.parametrize("quantity", ["outer loss", "outer gradient norm", "inner gradient norm", "fast weights"])
def test_stop_names_step_and_quantity_and_keeps_only_finite_checkpoints(quantity: str, tmp_path: Path) -> None:
    module = Poisoned(quantity, {1})
    with pytest.raises(NonFiniteError, match=rf"^step 1: {quantity} is (nan|inf); training stopped") as err:
        _fit(module, tmp_path, max_steps=3)
    assert "\n" not in str(err.value)
    assert _finite_checkpoints(tmp_path) == {"epoch=0-step=1.ckpt": 1, "last.ckpt": 1}  # the step before the NaN
    assert first_non_finite(module.state_dict()) is None  # the poisoned step never reached the optimizer


def test_skip_drops_the_batch_and_counts_it(tmp_path: Path) -> None:
    module = Poisoned("outer loss", {1, 2}, nonfinite="skip")
    with pytest.warns(UserWarning, match=r"step 2: outer loss is nan; batch skipped \(model.nonfinite=skip, 2 so far"):
        trainer = _fit(module, tmp_path, max_steps=4)
    assert trainer.global_step == 4 and trainer.callback_metrics["train/skipped_batches"] == 2
    adam_steps = {int(state["step"]) for state in trainer.optimizers[0].state.values()}
    assert adam_steps == {2}  # four batches, two updates
    last = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    (guard_state,) = [v for k, v in last["callbacks"].items() if k.startswith("NonFiniteGuard")]
    assert guard_state == {"skipped": 2}
    assert set(_finite_checkpoints(tmp_path).values()) == {1, 2, 3, 4}

    with torch.no_grad():
        module.model.embed.weight[3, 1] = NAN
    with pytest.raises(NonFiniteError, match=r"weight model.embed.weight is non-finite; checkpoint not written"):
        trainer.save_checkpoint(tmp_path / "diverged.ckpt")
    assert not (tmp_path / "diverged.ckpt").exists()


def _nan_checkpoint(path: Path) -> Path:
    module = TTTLanguageModel(method="fa", seq_len=64)
    state = module.state_dict()
    state["model.blocks.0.attn.wk.weight"][0, 0] = NAN
    torch.save({"state_dict": state, "hyper_parameters": dict(module.hparams), "global_step": 3}, path)
    return path


def test_non_finite_checkpoint_does_not_load_for_inference(tmp_path: Path, capsys) -> None:
    ckpt = _nan_checkpoint(tmp_path / "nan.ckpt")
    with pytest.raises(ValueError, match=r"nan.ckpt holds non-finite weights \(blocks\.0\.attn\.wk\.weight has NaN or Inf\)"):
        load_checkpoint(ckpt)
    assert main(["generate", "--ckpt", str(ckpt), "--ids", "--max-new-tokens", "2"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("ttt generate: error: ") and "non-finite weights" in line
    module = TTTLanguageModel(method="fa", seq_len=64)
    with pytest.raises(ValueError, match=r"model.init_from=.*nan.ckpt: model\.blocks\.0\.attn\.wk\.weight holds NaN"):
        load_weights(module, str(ckpt))


@pytest.mark.slow
def test_diverging_fit_exits_non_zero_naming_step_and_quantity(tmp_path: Path, capsys) -> None:
    code = main(["fit", "--config", str(REPO / "recipes/debug/e2e.yaml"), "--model.lr=1e3", "--data.seq_len=128",
                 "--data.batch_size=2", "--data.max_val_windows=2", "--trainer.max_steps=6",
                 "--trainer.limit_val_batches=1", "--trainer.callbacks.init_args.every_n_train_steps=1",
                 f"--trainer.logger.init_args.save_dir={tmp_path}"])
    assert code == 1
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("ttt fit")]
    assert line.startswith("ttt fit: error: step 1: outer gradient norm is nan; training stopped"), line
    (run,) = (tmp_path / "debug-e2e").iterdir()
    assert _finite_checkpoints(run / "checkpoints") == {"step000001.ckpt": 1, "last.ckpt": 1}


def test_policy_is_a_documented_checked_setting(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--model.nonfinite {stop,skip} At the first NaN or Inf in training" in out
    assert main(["fit", "--config", str(REPO / "recipes/debug/e2e.yaml"), "--model.nonfinite=ignore"]) == 2
    assert "model.nonfinite" in capsys.readouterr().err
