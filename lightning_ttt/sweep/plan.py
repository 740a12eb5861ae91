"""The sweep's plan: every fit and evaluation as a step, in execution order, with its files.

A step lives in ``<out>/runs/<name>/`` and is finished when its marker file exists there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_ttt.sweep.spec import SweepSpec, deep_merge, get_dotted

OUT = "{out}"  # placeholder for the output directory in run configs (hashes stay valid if it moves)


@dataclass
class Step:
    """One point of the grid at one stage and length; its files live in ``<out>/runs/<name>/``."""

    combo: str
    method: str
    point: dict[str, Any]
    stage: str  # "pretrain" | "extend"
    seq_len: int

    MARKER = ""  # written when the step finished

    @property
    def name(self) -> str:
        return f"{self.combo}/{self.stage}-{self.seq_len:05d}"

    @property
    def directory(self) -> str:
        """Where the step's files go, relative to the sweep's output directory."""
        return f"runs/{self.name}"


@dataclass
class Fit(Step):
    """One training run: pretraining at the base length or extension at a target length."""

    config: dict[str, Any] = field(default_factory=dict)  # nested LightningCLI config with OUT placeholders

    MARKER = "fit.done.json"

    @property
    def checkpoint(self) -> str:
        """The run's final checkpoint, relative to the sweep's output directory."""
        return f"{self.directory}/checkpoints/last.ckpt"


@dataclass
class Evaluation(Step):
    """One checkpoint evaluated at one length (as ``method``, which may differ for shared fa/swa weights)."""

    fit: Fit | None = None  # the run whose last checkpoint is evaluated

    MARKER = "eval.done.json"

    @property
    def results(self) -> str:
        """``ttt eval-context``'s output directory, relative to the sweep's output directory."""
        return f"{self.directory}/eval"


def read_marker(out: Path, step: Step) -> dict[str, Any] | None:
    """The finished step's marker (fingerprint, seconds, …), or None while it has not finished."""
    path = out / step.directory / step.MARKER
    return json.loads(path.read_text()) if path.is_file() else None


def plan(spec: SweepSpec) -> list[Step]:
    """Every step in execution order: pretraining and its evaluations, then each length's extensions."""
    combos = spec.combos()
    owned = {combo: _fit(spec, combo, method, point, "pretrain", spec.pretrain_len, None)
             for combo, method, point in combos if method not in spec.share}
    # a method in `share` starts from the owner's pretraining (same grid point)
    pretrained = {combo: owned[spec.share[method] + combo[len(method):] if method in spec.share else combo]
                  for combo, method, _ in combos}
    steps: list[Step] = list(owned.values())
    steps += [Evaluation(combo, method, point, "pretrain", spec.pretrain_len, fit=pretrained[combo])
              for combo, method, point in combos]
    for length in spec.lengths:
        for combo, method, point in combos:
            fit = _fit(spec, combo, method, point, "extend", length, pretrained[combo])
            steps += [fit, Evaluation(combo, method, point, "extend", length, fit=fit)]
    return steps


def _fit(spec: SweepSpec, combo: str, method: str, point: dict[str, Any], stage: str, length: int,
         init: Fit | None) -> Fit:
    config = spec.settings(method, stage, length, point)
    fit = Fit(combo, method, point, stage, length, config=config)
    max_steps = get_dotted(config, "trainer.max_steps")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"sweep point {fit.name}: trainer.max_steps must be set to a positive integer "
                         "(in sweep.base or the stage's `set`)")
    run_dir = f"{OUT}/{fit.directory}"
    every = max_steps // 4 if max_steps % 4 == 0 else max_steps  # must divide max_steps: the last step is saved
    callbacks = [c for c in get_dotted(config, "trainer.callbacks") or []
                 if not str(c.get("class_path", "")).endswith("ModelCheckpoint")]
    callbacks.append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {
        "dirpath": f"{run_dir}/checkpoints", "filename": "step{step:06d}", "auto_insert_metric_name": False,
        "every_n_train_steps": every, "save_last": True, "save_top_k": 1}})
    forced: dict[str, Any] = {
        "trainer": {"default_root_dir": run_dir, "callbacks": callbacks, "logger": {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": f"{OUT}/runs", "name": combo, "version": f"{stage}-{length:05d}",
                          "default_hp_metric": False}}},
        "model": {"method": method, "init_from": None if init is None else f"{OUT}/{init.checkpoint}"},
        "data": {"seq_len": length},
    }
    if stage == "extend" and spec.tokens_per_batch:
        forced["data"]["batch_size"] = max(1, spec.tokens_per_batch // length)
    deep_merge(config, forced)
    return fit


def eval_args(spec: SweepSpec, ev: Evaluation) -> list[str]:
    """``ttt eval-context`` arguments of one evaluation (with OUT placeholders)."""
    e = spec.evaluate
    args = [f"{OUT}/{ev.fit.checkpoint}", "--lengths", str(ev.seq_len), "--out", f"{OUT}/{ev.results}",
            "--tokens-per-length", str(e.get("tokens_per_length", 262_144) or 0),
            "--batch-tokens", str(e.get("batch_tokens", 16_384)), "--last-tokens", str(e.get("last_tokens", 512)),
            "--accelerator", str(e.get("accelerator", "auto")), "--precision", str(e.get("precision", "32-true"))]
    if e.get("min_doc_tokens") is not None:
        args += ["--min-doc-tokens", str(e["min_doc_tokens"])]
    if ev.method != ev.fit.method:
        args += ["--method", ev.method]
    return args


def describe(spec: SweepSpec, steps: list[Step]) -> str:
    """The plan, one line per step."""
    lines = [f"sweep {spec.name} -> {spec.out_dir}: {sum(isinstance(s, Fit) for s in steps)} fits, "
             f"{sum(isinstance(s, Evaluation) for s in steps)} evaluations"]
    for step in steps:
        if isinstance(step, Fit):
            c = step.config
            detail = (f"max_steps={get_dotted(c, 'trainer.max_steps')} batch={get_dotted(c, 'data.batch_size')} "
                      f"lr={get_dotted(c, 'model.lr')}")
            if get_dotted(c, "model.init_from"):
                detail += f" from {'/'.join(Path(get_dotted(c, 'model.init_from')).parts[-4:-2])}"
            lines.append(f"  fit  {step.name:<28} {detail}")
        else:
            lines.append(f"  eval {step.name:<28} checkpoint of {step.fit.name}"
                         + (f" as {step.method}" if step.method != step.fit.method else ""))
    return "\n".join(lines)
