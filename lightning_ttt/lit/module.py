"""The LightningModule: the outer (meta-learning) objective around the functional inner loop.

Lightning owns the outer loop — backward, gradient clipping, accumulation, the AdamW step. The
module's ``training_step`` returns the meta loss; ``inner_update`` is the inner optimiser hook
(clipped SGD on the fast weights) that the inner loop calls after every mini-batch.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from lightning_ttt.config import EXPORT_WEIGHTS, NOT_SETTINGS, PRESETS, Method, ModelConfig, ModelSettings, settings_dict
from lightning_ttt.infer.loading import model_state
from lightning_ttt.io import load_safetensors
from lightning_ttt.lit.callbacks import HparamsSummary, PositionReport, TrainThroughput
from lightning_ttt.lit.guard import NonFiniteGuard, NonFinitePolicy
from lightning_ttt.lit.sharding import strategy_problem
from lightning_ttt.metrics import PositionCurve, PositionNLL, position_report
from lightning_ttt.model.checkpointing import checkpoint_blocks
from lightning_ttt.model.flops import model_flops
from lightning_ttt.model.sharding import shard_model
from lightning_ttt.model.transformer import FastWeights, Transformer
from lightning_ttt.model.weights import first_non_finite, load_strict, state_mismatch
from lightning_ttt.ttt.objective import LMOutput, lm_loss
from lightning_ttt.ttt.update import effective_inner_lr, make_update


class TTTLanguageModel(L.LightningModule):
    """Language model trained as full attention, sliding window, or TTT-E2E.

    Args:
        preset: Architecture preset: debug, 125m, 350m, 760m, 1b or 3b; or an exported model directory whose
            config.json supplies the architecture (checkpoints then record it whole, with preset null);
            or null for an architecture given whole in config.
        method: fa (full attention), swa (sliding window) or e2e (test-time training).
        config: Model settings that replace the preset's (window, mini_batch, inner_lr, ...; see ModelConfig).
        seq_len: Training sequence length (linked from data.seq_len by the CLI).
        lr: Peak outer learning rate; end_lr is reached at the last step by cosine decay.
        end_lr: Outer learning rate at the last step.
        warmup_fraction: Share of trainer.max_steps spent in linear warm-up from 0.
        weight_decay: AdamW weight decay (the paper's: 0.1).
        betas: AdamW betas (the paper's: 0.9, 0.95).
        eps: AdamW epsilon.
        eval_ttt: Run test-time training in validation and test for e2e models.
        vocab_size: The tokenizer's vocabulary (linked from data by the CLI); config.vocab_size may pad it.
        bos_id: The tokenizer's BOS id (linked from data by the CLI).
        eos_id: The tokenizer's EOS id (linked from data by the CLI).
        init_from: A Lightning checkpoint or an exported model directory (ttt export, ttt import-jax) whose
            weights (only) initialise the model when fit starts (extension fine-tuning); keys and shapes must
            match, and a directory's architecture must be this model's but for run settings (window,
            mini_batch, rope_theta, the inner optimiser, execution policies).
        position_buckets: Fixed-width position buckets of the per-position NLL report (the log-spaced
            ones start at mini_batch and double).
        nonfinite: At the first NaN or Inf in training (outer loss, outer gradient norm, inner gradient norm,
            fast weights): stop with an error naming the step and the quantity, or skip the batch (no
            update; counted in train/skipped_batches). Checkpoints with non-finite weights are never written.
    """

    def __init__(
        self,
        preset: str | None = "debug",
        method: Method = "e2e",
        config: ModelSettings = ModelSettings(),  # noqa: B008 - never modified
        seq_len: int = 256,
        lr: float = 3e-3,
        end_lr: float = 1e-5,
        warmup_fraction: float = 0.1,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        eval_ttt: bool = True,
        vocab_size: int | None = None,
        bos_id: int | None = None,
        eos_id: int | None = None,
        init_from: str | None = None,
        position_buckets: int = 16,
        nonfinite: NonFinitePolicy = "stop",
    ) -> None:
        config = settings_dict(config)  # hyper-parameters hold a plain dict: checkpoints load without pickles
        super().__init__()
        self.save_hyperparameters()
        self.cfg = ModelConfig.from_settings(preset, method, config, vocab_size=vocab_size, bos_id=bos_id, eos_id=eos_id)
        if preset is not None and preset not in PRESETS:  # an exported directory: checkpoints must not depend on it
            resolved = {k: v for k, v in self.cfg.to_dict().items() if k not in NOT_SETTINGS}
            self.hparams.update(preset=None, config=resolved)
        self.cfg.check_seq_len(seq_len, "data.seq_len")
        if not 0 <= warmup_fraction < 1:
            raise ValueError(f"model.warmup_fraction={warmup_fraction} must be in [0, 1)")
        if nonfinite not in ("stop", "skip"):
            raise ValueError(f"model.nonfinite={nonfinite!r}: expected stop or skip")
        if position_buckets < 1:
            raise ValueError(f"model.position_buckets={position_buckets} must be >= 1")
        self.model = Transformer(self.cfg)
        self.val_loss = MeanMetric()
        self.val_token_nll = MeanMetric()
        self.val_position = PositionNLL(seq_len)
        self.last_eval: dict[str, Any] = {}  # the latest validation/test result: loss, nll, ppl, curve
        self.flops_per_batch = 0  # FLOPs of the current training batch, read by TrainThroughput
        self._checkpoint_step: int | None = None  # global step of the checkpoint loaded for validate/test
        self.step_quantities: dict[str, Any] = {}  # this training step's inner values, for NonFiniteGuard

    def configure_model(self) -> None:
        """Execution policies, applied to the built model (torchtitan style)."""
        if self.cfg.checkpoint_blocks:
            checkpoint_blocks(self.model, offload_inputs=self.cfg.offload_block_inputs)
        if self.device_mesh is not None:  # ModelParallelStrategy (fsdp2): FSDP2 over the data-parallel ranks
            shard_model(self.model, self.device_mesh["data_parallel"])

    def configure_callbacks(self) -> list[L.Callback]:
        return [PositionReport(), NonFiniteGuard(self.hparams.get("nonfinite", "stop")), TrainThroughput(),
                HparamsSummary()]

    def _train_batch_size(self) -> int:
        return getattr(getattr(self.trainer, "datamodule", None), "batch_size", 1)

    def training_flops_per_batch(self) -> int:
        """Analytic FLOPs (forward + backward) of one training batch of ``data.batch_size`` sequences."""
        return self._train_batch_size() * model_flops(self.cfg, self.hparams.seq_len)

    def flops_description(self) -> str:
        return (f"{self.training_flops_per_batch() / 1e9:.2f} GFLOP per training batch of {self._train_batch_size()} x "
                f"{self.hparams.seq_len} tokens (forward + backward of the {self.cfg.method} model; an analytic count "
                "of the matrix multiplications)")

    def run_settings(self) -> dict[str, Any]:
        """The settings a fit is compared by in TensorBoard's HPARAMS tab."""
        cfg, hp, trainer = self.cfg, self.hparams, self.trainer
        data = getattr(trainer, "datamodule", None)
        coverage = getattr(data, "validation_coverage", {})  # what val/loss measures
        return {"method": cfg.method, "preset": str(hp.preset), "window": cfg.attention_window or 0,
                "mini_batch": cfg.mini_batch, "seq_len": hp.seq_len, "lr": hp.lr, "inner_lr": cfg.inner_lr,
                "meta_learning": cfg.meta_learning, "max_steps": trainer.max_steps,
                "batch_size": getattr(data, "batch_size", 0), "val_windows": coverage.get("windows", 0),
                "val_documents": coverage.get("documents", 0)}

    def setup(self, stage: str) -> None:
        check_strategy(self.trainer.strategy, self.cfg)
        if stage == "fit" and self.hparams.init_from and self.trainer.ckpt_path is None:
            load_weights(self, self.hparams.init_from)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint trained with another vocabulary is a clear error, not a shape mismatch."""
        embed = checkpoint.get("state_dict", {}).get("model.embed.weight")
        if embed is not None and embed.shape[0] != self.cfg.vocab_size:
            raise ValueError(f"the checkpoint's vocabulary has {embed.shape[0]} ids but this model has vocab_size="
                             f"{self.cfg.vocab_size} (from data.tokenizer); use the tokenizer the checkpoint was "
                             "trained with")
        self._checkpoint_step = checkpoint.get("global_step")
        saved = checkpoint.get("hyper_parameters", {})
        for name in ("bos_id", "eos_id"):
            if saved.get(name) is not None and saved[name] != getattr(self.cfg, name):
                raise ValueError(f"the checkpoint was trained with {name}={saved[name]} but this model has "
                                 f"{name}={getattr(self.cfg, name)} (from data.tokenizer); use the checkpoint's "
                                 "tokenizer")

    # ------------------------------------------------------------------ inner loop hook
    def _outer_step(self) -> int | None:
        """The outer step the inner lr warms up over in training; None (fully warm) in evaluation."""
        return self.global_step if self.training else None

    def inner_lr(self) -> float:
        """Effective inner lr: warmed up over outer steps in training, fully warm in evaluation."""
        cfg = self.cfg
        return effective_inner_lr(cfg.inner_lr, cfg.ilr_init, cfg.ilr_warmup_steps, self._outer_step())

    def inner_update(self, fast: FastWeights, grads: FastWeights) -> tuple[FastWeights, Tensor]:
        """One inner optimiser step on the fast weights (override to try another inner optimiser)."""
        return make_update(self.cfg, self._outer_step())(fast, grads)

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict[str, Tensor], *, ttt: bool, create_graph: bool) -> LMOutput:
        return lm_loss(self.model, batch["input_ids"], batch["targets"], batch["loss_mask"], ttt=ttt,
                       update=self.inner_update, create_graph=create_graph,
                       checkpoint_chunks=self.cfg.checkpoint_chunks)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self(batch, ttt=self.cfg.ttt_in_training, create_graph=True)
        self.log("train/loss", out.loss, prog_bar=True)
        self.step_quantities = {}
        if out.inner is not None:
            norms = out.inner.grad_norm.detach()
            self.step_quantities = {"inner gradient norm": norms, "fast weights": out.inner.fast}
            self.log_dict({
                "ttt/inner_grad_norm_mean": norms.mean(), "ttt/inner_grad_norm_max": norms.max(),
                "ttt/inner_clip_fraction": (norms >= self.cfg.inner_clip).float().mean(),
                "ttt/inner_lr_multiplier": self.inner_lr() / self.cfg.inner_lr,
            })
        return out.loss

    def on_train_start(self) -> None:
        """Resumed (``--ckpt_path``): the optimiser and schedule settings are the config's, not the ones
        restored with the checkpoint's optimiser state (a new lr, end_lr, warm-up, AdamW setting or
        trainer.max_steps takes effect from the next step)."""
        if self.trainer.ckpt_path is not None and self.trainer.lr_scheduler_configs:
            adopt_settings(self.trainer.optimizers[0], self.trainer.lr_scheduler_configs[0].scheduler,
                           self.configure_optimizers())

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        size, length = batch["input_ids"].shape  # [B, T]
        self.flops_per_batch = size * model_flops(self.cfg, length)

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, batch: dict[str, Tensor]) -> LMOutput:
        ttt = self.cfg.method == "e2e" and self.hparams.eval_ttt
        if not ttt:
            return self(batch, ttt=False, create_graph=False)
        # TTT needs autograd even under Trainer.validate()/test(), which default to inference mode.
        with torch.inference_mode(False), torch.enable_grad():
            batch = {k: v.clone() for k, v in batch.items()}
            return self(batch, ttt=True, create_graph=False)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        out = self._evaluate(batch)
        self.val_loss.update(out.chunk_loss.mean(1))
        mask = batch["loss_mask"]
        self.val_token_nll.update(out.token_nll[mask])  # token-weighted: perplexity is exp of this mean
        if out.token_nll.shape[1] != self.val_position.seq_len:
            self.val_position = PositionNLL(out.token_nll.shape[1]).to(self.device)
        self.val_position.update(out.token_nll, mask)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def on_validation_end(self) -> None:
        self._forget_step()

    def on_test_end(self) -> None:
        self._forget_step()

    def _forget_step(self) -> None:
        """The ``step`` logged with an evaluation only places its metrics on the step axis; left among the
        callback metrics, ModelCheckpoint would name later checkpoints by it (``filename: step{step}``)."""
        self.trainer.callback_metrics.pop("step", None)

    def eval_step(self) -> int:
        """The step an evaluation is logged at: the optimizer steps behind the weights it evaluates (during
        fit the global step; in validate/test the loaded checkpoint's). Training scalars use the same
        scale: the loss of the n-th batch is computed by weights after n - 1 steps and logged at n - 1."""
        if self.trainer.state.fn == "fit" or self._checkpoint_step is None:
            return self.trainer.global_step
        return int(self._checkpoint_step)

    def _log_eval(self, split: str) -> None:
        """Log loss, token NLL, perplexity and the per-position buckets at ``eval_step()``; keep the result
        in ``last_eval``."""
        loss, nll = self.val_loss.compute(), self.val_token_nll.compute()
        curve: PositionCurve = self.val_position.compute()
        step = self.eval_step()
        self.log("step", float(step))  # Lightning logs these metrics at this step instead of its batch count
        self.log(f"{split}/loss", loss, prog_bar=True)
        self.log(f"{split}/nll", nll)
        self.log(f"{split}/ppl", torch.exp(nll))
        report = position_report(curve, self.cfg.mini_batch, self.hparams.position_buckets)
        for kind in ("log", "fixed"):  # one TensorBoard section, two bucketings
            for row in report[f"{kind}_buckets"]:
                self.log(f"{split}_nll_by_position/{kind}_{row['lo']:06d}-{row['hi']:06d}", row["nll"])
        self.last_eval = {"split": split, "step": step, "loss": float(loss), "nll": float(nll),
                          "ppl": float(torch.exp(nll)), "curve": curve, "report": report}  # written to disk and TensorBoard by PositionReport
        for metric in (self.val_loss, self.val_token_nll, self.val_position):
            metric.reset()

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps,
                                      weight_decay=hp.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(hp.warmup_fraction * total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total, hp.end_lr / hp.lr))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def check_strategy(strategy: Any, cfg: ModelConfig) -> None:
    """Refuse strategies that cannot train this model (``lightning_ttt.lit.sharding.strategy_problem``):
    for e2e meta-learning (gradients of gradients) FSDP1 and DeepSpeed ZeRO-3; tensor parallelism for any
    method. ``strategy`` is a Lightning strategy object or its registry name."""
    problem = strategy_problem(strategy, cfg.ttt_in_training)
    if problem is not None:
        shown = strategy if isinstance(strategy, str) else type(strategy).__name__
        raise ValueError(f"trainer.strategy={shown} cannot train method={cfg.method}"
                         f"{' with meta-learning' if cfg.ttt_in_training else ''}: {problem}")


def module_from_checkpoint(ckpt: dict[str, Any], hp: dict[str, Any], source: str) -> TTTLanguageModel:
    """A ``TTTLanguageModel`` built from hyper-parameters ``hp`` holding ``ckpt``'s weights, in eval mode."""
    try:
        module = TTTLanguageModel(**hp)
    except TypeError as err:
        raise ValueError(f"{source} is not a TTTLanguageModel checkpoint ({err})") from None
    load_strict(module.model, model_state(ckpt), source)
    return module.eval()


def load_weights(module: L.LightningModule, path: str) -> None:
    """Copy the model weights (only) from a Lightning checkpoint or an exported model directory into
    ``module``: strict keys and shapes; a directory's architecture must also match (``exported_state``)."""
    if Path(path).is_dir():
        saved = exported_state(module.cfg, path)
    else:
        if not Path(path).exists():
            raise ValueError(f"model.init_from={path}: no such checkpoint or exported model directory")
        if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
            raise ValueError(f"model.init_from={path}: not a checkpoint (not an archive written by torch.save)")
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        except (KeyError, TypeError):
            raise ValueError(f"model.init_from={path}: not a Lightning checkpoint (no state_dict)") from None
        except Exception as err:  # a damaged archive, or content that safe loading refuses
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            raise ValueError(f"model.init_from={path}: not a loadable checkpoint ({first})") from None
    own = {k: v for k, v in module.state_dict().items() if k.startswith("model.")}
    saved = {k: v for k, v in saved.items() if k.startswith("model.")}
    missing, unexpected, wrong = state_mismatch(own, saved)
    if missing or unexpected:
        raise ValueError(f"model.init_from={path}: keys differ (missing {missing[:3]}, unexpected {unexpected[:3]}); "
                         "the checkpoint is for another method or size")
    if wrong:
        key = wrong[0]
        raise ValueError(f"model.init_from={path}: {key} has shape {tuple(saved[key].shape)}, the model "
                         f"{tuple(own[key].shape)}; the checkpoint is for another size or vocabulary")
    bad = first_non_finite(saved)
    if bad is not None:
        raise ValueError(f"model.init_from={path}: {bad} holds NaN or Inf (the run that wrote it diverged)")
    module.load_state_dict(saved, strict=False)


def exported_state(cfg: ModelConfig, path: str | Path) -> dict[str, Tensor]:
    """The weights of an exported model directory as ``model.*`` keys, after checking that its recorded
    architecture equals ``cfg`` in every setting a run cannot change (``config.RUN_SETTINGS``)."""
    try:
        theirs = ModelConfig.from_exported(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"model.init_from={path}: {err}") from None
    diffs = cfg.architecture_differences(theirs)
    if diffs:
        detail = ", ".join(f"{name}={getattr(cfg, name)!r} (directory: {getattr(theirs, name)!r})" for name in diffs)
        raise ValueError(f"model.init_from={path}: this run's model differs from the directory's in {detail}; "
                         f"set model.preset: {path} (or model.config) to use its architecture")
    weights = Path(path) / EXPORT_WEIGHTS
    if not weights.is_file():
        raise ValueError(f"model.init_from={path}: no {EXPORT_WEIGHTS} in the directory")
    return {f"model.{name}": tensor for name, tensor in load_safetensors(weights).items()}


def adopt_settings(optimizer: torch.optim.Optimizer, scheduler: Any, configured: dict[str, Any]) -> None:
    """Give ``optimizer`` (state kept) and its LambdaLR ``scheduler`` (position kept) the settings of the
    freshly ``configured`` optimizer and scheduler (``configure_optimizers``' result)."""
    fresh, fresh_scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    scheduler.base_lrs = list(fresh_scheduler.base_lrs)
    scheduler.lr_lambdas = list(fresh_scheduler.lr_lambdas)
    for group, new, base, factor in zip(optimizer.param_groups, fresh.param_groups, scheduler.base_lrs,
                                        scheduler.lr_lambdas):
        group.update({key: new[key] for key in ("betas", "eps", "weight_decay", "initial_lr")})
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


class WarmupCosine:
    """LR factor: linear from 0 over ``warmup`` steps, then cosine to ``end_factor`` at ``total``."""

    def __init__(self, warmup: int, total: int, end_factor: float) -> None:
        self.warmup, self.total, self.end_factor = warmup, total, end_factor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.end_factor + (1 - self.end_factor) * 0.5 * (1 + math.cos(math.pi * progress))
