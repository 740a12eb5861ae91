"""The LightningModule: evaluation runs TTT (also under inference mode), schedules, the inner hook."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from lightning_ttt.lit.module import TTTLanguageModel, WarmupCosine
from lightning_ttt.ttt.objective import lm_loss


def _batch(seq_len: int = 64, batch: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (batch, seq_len + 1), generator=g)
    return {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": torch.ones(batch, seq_len, dtype=torch.bool)}


def test_validation_uses_test_time_training() -> None:
    torch.manual_seed(0)
    module = TTTLanguageModel(method="e2e", seq_len=64)
    batch = _batch()
    with torch.no_grad():
        evaluated = module._evaluate(batch)
    expected = lm_loss(module.model, **batch, ttt=True, update=module.inner_update, create_graph=False)
    plain = lm_loss(module.model, **batch, ttt=False)
    torch.testing.assert_close(evaluated.token_nll, expected.token_nll)
    # After the first mini-batch the TTT losses differ from the frozen-weight ones.
    b = module.cfg.mini_batch
    assert torch.equal(evaluated.token_nll[:, :b], plain.token_nll[:, :b]) or \
        torch.allclose(evaluated.token_nll[:, :b], plain.token_nll[:, :b], atol=1e-5)
    assert not torch.allclose(evaluated.token_nll[:, b:], plain.token_nll[:, b:], atol=1e-4)


class _Batches(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        return {k: v[0] for k, v in _batch().items()}


def test_validate_works_under_inference_mode() -> None:
    module = TTTLanguageModel(method="e2e", seq_len=64)
    trainer = L.Trainer(inference_mode=True, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu")
    (metrics,) = trainer.validate(module, torch.utils.data.DataLoader(_Batches(), batch_size=2))
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))


def test_inner_lr_warms_up_over_outer_steps_and_is_full_in_evaluation() -> None:
    module = TTTLanguageModel(method="e2e", seq_len=64, config={"ilr_init": 0.1, "ilr_warmup_steps": 10})
    module.train()
    assert module.inner_lr() == pytest.approx(0.1 + 0.9 * 1 / 10)  # outer step 0
    module.eval()
    assert module.inner_lr() == 1.0


def test_warmup_cosine_schedule() -> None:
    f = WarmupCosine(warmup=10, total=110, end_factor=0.01)
    assert f(0) == 0.0 and f(5) == 0.5 and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.01 + 0.99 * 0.5)
    assert f(110) == pytest.approx(0.01) and f(500) == pytest.approx(0.01)


def test_validation_metrics_weight_every_unmasked_token_equally() -> None:
    torch.manual_seed(0)
    module = TTTLanguageModel(method="fa", seq_len=64, position_buckets=4)
    first, second = _batch(), _batch()
    second["loss_mask"][0, 10:] = False  # one sequence with far fewer targets
    outs = []
    for batch in (first, second):
        module.validation_step(batch, 0)
        outs.append(module._evaluate(batch))
    nll = torch.cat([o.token_nll for o in outs])
    mask = torch.cat([first["loss_mask"], second["loss_mask"]])
    torch.testing.assert_close(module.val_token_nll.compute(), nll[mask].mean(), check_dtype=False)
    curve = module.val_position.compute()
    torch.testing.assert_close(curve.tokens, mask.sum(0).double())
    torch.testing.assert_close(curve.nll, ((nll * mask).sum(0) / mask.sum(0)).double(), rtol=1e-5, atol=1e-6)


def test_bad_module_settings() -> None:
    with pytest.raises(ValueError, match="position_buckets"):
        TTTLanguageModel(position_buckets=0)
    with pytest.raises(ValueError, match="warmup_fraction"):
        TTTLanguageModel(warmup_fraction=1.5)
    with pytest.raises(ValueError, match="unknown model setting"):
        TTTLanguageModel(config={"windw": 3})


def test_policies_are_applied_to_the_built_model() -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    plain = TTTLanguageModel(method="fa", seq_len=64)
    plain.configure_model()
    assert not any(isinstance(b, CheckpointWrapper) for b in plain.model.blocks)
    wrapped = TTTLanguageModel(method="fa", seq_len=64, config={"checkpoint_blocks": True})
    keys = list(wrapped.state_dict())
    wrapped.configure_model()
    assert all(isinstance(b, CheckpointWrapper) for b in wrapped.model.blocks)
    assert list(wrapped.state_dict()) == keys  # checkpoints are the same either way


def test_position_report_callback_writes_files_and_the_figure(tmp_path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    module = TTTLanguageModel(method="e2e", seq_len=64, position_buckets=4)
    assert [type(c).__name__ for c in module.configure_callbacks()] == ["PositionReport", "NonFiniteGuard", "TrainThroughput",
                                                                      "HparamsSummary"]
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    trainer = L.Trainer(logger=logger, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.validate(module, torch.utils.data.DataLoader(_Batches(), batch_size=2))
    report = json.loads((tmp_path / "run" / "version_0" / "nll_by_position" / "val-step000000.json").read_text())
    assert report["seq_len"] == 64 and len(report["fixed_buckets"]) == 4
    assert report["nll"] == pytest.approx(module.last_eval["curve"].nll.tolist(), abs=1e-6)
    events = EventAccumulator(str(tmp_path / "run" / "version_0"), size_guidance={"images": 0}).Reload()
    assert "val/nll_by_position" in events.Tags()["images"]


@pytest.mark.slow
def test_checkpoints_and_evaluations_carry_the_step_of_their_weights(tmp_path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    module = TTTLanguageModel(method="fa", seq_len=64)
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="step{step:06d}", auto_insert_metric_name=False,
                            every_n_train_steps=1, save_top_k=-1)
    trainer = L.Trainer(logger=TensorBoardLogger(tmp_path, name="run", version=0), callbacks=[saver], max_steps=3,
                        val_check_interval=1, num_sanity_val_steps=0, log_every_n_steps=1, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    loader = torch.utils.data.DataLoader(_Batches(), batch_size=1)
    trainer.fit(module, loader, loader)
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["step000001.ckpt", "step000002.ckpt", "step000003.ckpt"]
    for name in files:  # each file holds the weights of the step it is named after
        assert torch.load(tmp_path / "ckpt" / name, weights_only=True)["global_step"] == int(name[4:10])
    events = EventAccumulator(str(tmp_path / "run" / "version_0")).Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [1, 2, 3]
    assert [e.step for e in events.Scalars("train/loss")] == [0, 1, 2]
