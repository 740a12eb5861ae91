"""Exact resume through the real CLI: a run killed while saving step K+1 resumes from step K and
reaches step N with the same batches, losses and weights as an uninterrupted run (CPU)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

import lightning_ttt.lit.checkpoint_io as checkpoint_io
from lightning_ttt.lit.cli import cli_main

REPO = Path(__file__).resolve().parents[2]
N = 7  # steps of every run


class Recorder(L.Callback):
    """Per optimizer step: (global step, loss, fingerprint of the batch)."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, float, str]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        digest = hashlib.sha1(batch["input_ids"].numpy().tobytes() + batch["loss_mask"].numpy().tobytes()).hexdigest()
        self.steps.append((trainer.global_step, float(outputs["loss"]), digest))


def _tiny_config(root: Path, workers: int) -> Path:
    """Tiny e2e model (d 32, 2 blocks, k 32, b 16), 64-token windows, a checkpoint after every step."""
    config = {
        "trainer": {"max_steps": N, "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
                    "limit_val_batches": 0, "default_root_dir": str(root), "callbacks": [{
                        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {"dirpath": str(root / "ckpt"), "filename": "step{step:02d}",
                                      "auto_insert_metric_name": False, "every_n_train_steps": 1,
                                      "save_top_k": -1, "save_last": True}}]},
        "model": {"config": {"d_model": 32, "n_layers": 2, "n_heads": 4, "mlp_hidden": 64, "window": 32,
                             "mini_batch": 16}},
        "data": {"seq_len": 64, "batch_size": 2, "num_workers": workers, "shuffle_buffer": 32, "max_val_windows": 2},
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fit(root: Path, workers: int, ckpt_path: Path | None = None) -> Recorder:
    cli = cli_main(["--config", str(REPO / "recipes/debug/e2e.yaml"), "--config", str(_tiny_config(root, workers))],
                   run=False)
    recorder = Recorder()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=ckpt_path)
    return recorder


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("kill_at, workers", [(3, 2), (4, 0)])
def test_killed_while_saving_then_resumed_equals_uninterrupted(tmp_path, monkeypatch, kill_at, workers):
    full = _fit(tmp_path / "full", workers)
    assert [s[0] for s in full.steps] == list(range(1, N + 1))

    real_save = torch.save

    def save_or_die(obj, f, *args, **kwargs):  # dies half-way through writing step kill_at + 1
        if isinstance(obj, dict) and obj.get("global_step") == kill_at + 1:
            f.write(b"half a checkpoint")
            raise OSError("simulated kill while saving")
        return real_save(obj, f, *args, **kwargs)

    killed_root = tmp_path / "killed"
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_io.torch, "save", save_or_die)
        with pytest.raises(OSError, match="simulated kill"):
            _fit(killed_root, workers)
    ckpt_dir = killed_root / "ckpt"
    assert not list(ckpt_dir.glob(".*.tmp"))  # nothing half-written left behind
    last = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == kill_at  # the previous checkpoint survived the kill

    resumed = _fit(killed_root, workers, ckpt_path=ckpt_dir / "last.ckpt")
    assert resumed.steps == full.steps[kill_at:]  # same batches and bitwise-same losses from step kill_at + 1
    final_full, final_resumed = _weights(tmp_path / "full" / "ckpt" / "last.ckpt"), _weights(ckpt_dir / "last.ckpt")
    assert final_full.keys() == final_resumed.keys()
    for name, tensor in final_full.items():
        assert torch.equal(tensor, final_resumed[name]), name


@pytest.mark.slow
def test_checkpoint_with_another_vocabulary_is_a_clear_error(tmp_path, bpe_path):
    _fit(tmp_path, 0)
    args = ["validate", "--config", str(REPO / "recipes/debug/e2e.yaml"), "--config", str(tmp_path / "tiny.yaml"),
            "--data.tokenizer", str(bpe_path), "--ckpt_path", str(tmp_path / "ckpt" / "last.ckpt")]
    with pytest.raises(ValueError, match=r"the checkpoint's vocabulary has 258 ids but this model has vocab_size=\d+ "
                                         r"\(from data.tokenizer\); use the tokenizer the checkpoint was trained with"):
        cli_main(args)
