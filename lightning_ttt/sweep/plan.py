"""The sweep's plan: every fit and evaluation as a step, in execution order, with its files.

The protocol (the paper's): pretrain each method at the base length, then fine-tune the pretrained
weights at the base length and at every target length (``extend``), and evaluate each fine-tuned
checkpoint at its own length. Every evaluated point therefore has the same training budget: one
pretraining plus one fine-tune of ``trainer.max_steps`` x ``tokens_per_batch`` tokens. A method in
``share`` (swa: fa) reuses its owner's run wherever the two are the same model (the length within
swa's window, the same settings and the same starting weights) and counts that run as its own; it
runs its own fits everywhere else.

A step lives in ``<out>/runs/<name>/`` and is finished when its marker file exists there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_ttt.config import ModelConfig
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

    fit: Fit | None = None  # the run whose last checkpoint is evaluated (the owner's for a shared method)

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
    """Every step in execution order: the pretraining fits, then per fine-tune length (the base length
    first) each method's fit and the evaluation of its checkpoint at that length."""
    combos = spec.combos()
    pretrained = _stage_fits(spec, combos, "pretrain", spec.pretrain_len, {})
    steps: list[Step] = _own(pretrained)
    for length in spec.finetune_lengths:
        tuned = _stage_fits(spec, combos, "extend", length, pretrained)
        steps += _own(tuned)
        steps += [Evaluation(combo, method, point, "extend", length, fit=tuned[combo])
                  for combo, method, point in combos]
    return steps


def _own(fits: dict[str, Fit]) -> list[Fit]:
    """The fits that run (a shared method's entry is its owner's fit), in combo order."""
    return [fit for combo, fit in fits.items() if fit.combo == combo]


def _stage_fits(spec: SweepSpec, combos: list[tuple[str, str, dict[str, Any]]], stage: str, length: int,
                init: dict[str, Fit]) -> dict[str, Fit]:
    """combo -> the fit that trains it at ``stage`` and ``length``, starting from ``init[combo]`` if given."""
    fits: dict[str, Fit] = {}
    for combo, method, point in sorted(combos, key=lambda c: c[1] in spec.share):  # owners before sharers
        owner = spec.share.get(method)
        owner_combo = None if owner is None else owner + combo[len(method):]
        if owner_combo is not None and _same_model(spec, method, owner, stage, length, point) \
                and init.get(combo) is init.get(owner_combo):
            fits[combo] = fits[owner_combo]
        else:
            fits[combo] = _fit(spec, combo, method, point, stage, length, init.get(combo))
    return {combo: fits[combo] for combo, _, _ in combos}


def _same_model(spec: SweepSpec, method: str, owner: str, stage: str, length: int, point: dict[str, Any]) -> bool:
    """True when ``method`` and ``owner`` train the same model here: the same settings, and every query
    of a ``length``-token sequence sees its whole prefix within the sliding window."""
    mine, theirs = spec.settings(method, stage, length, point), spec.settings(owner, stage, length, point)
    for config in (mine, theirs):
        config.get("model", {}).pop("method", None)
    windows = [_attention_window(mine, m) for m in (method, owner)]
    return mine == theirs and all(w is None or length <= w for w in windows)


def _attention_window(config: dict[str, Any], method: str) -> int | None:
    """The window of ``method`` with the run's ``model.preset`` and ``model.config`` (None: full attention)."""
    model = config.get("model") or {}
    preset = {"preset": model["preset"]} if model.get("preset") else {}
    overrides = {k: v for k, v in (model.get("config") or {}).items() if v is not None}
    return ModelConfig.from_preset(method=method, **preset, **overrides).attention_window


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


def _tokens(config: dict[str, Any]) -> str:
    """Training tokens of one fit per device: steps x batch x accumulation x sequence length."""
    factors = [get_dotted(config, key) for key in ("trainer.max_steps", "data.batch_size", "data.seq_len")]
    factors.append(get_dotted(config, "trainer.accumulate_grad_batches") or 1)
    if not all(isinstance(f, int) for f in factors):
        return "?"
    total = factors[0] * factors[1] * factors[2] * factors[3]
    return f"{total / 1e6:.2f}M" if total >= 10**6 else f"{total / 1e3:.0f}K" if total >= 10**4 else str(total)


def describe(spec: SweepSpec, steps: list[Step]) -> str:
    """The plan, one line per step."""
    lines = [f"sweep {spec.name} -> {spec.out_dir}: {sum(isinstance(s, Fit) for s in steps)} fits, "
             f"{sum(isinstance(s, Evaluation) for s in steps)} evaluations",
             f"protocol: pretrain at {spec.pretrain_len}, fine-tune at {', '.join(map(str, spec.finetune_lengths))} "
             "(the base length too), evaluate each fine-tune at its length: every point gets one pretraining plus "
             "one fine-tune"]
    lines += [f"share: {method} reuses {owner}'s runs where they are the same model (length within the window)"
              for method, owner in spec.share.items()]
    for step in steps:
        if isinstance(step, Fit):
            c = step.config
            detail = (f"max_steps={get_dotted(c, 'trainer.max_steps')} batch={get_dotted(c, 'data.batch_size')} "
                      f"tokens={_tokens(c)} lr={get_dotted(c, 'model.lr')}")
            if get_dotted(c, "model.init_from"):
                detail += f" from {'/'.join(Path(get_dotted(c, 'model.init_from')).parts[-4:-2])}"
            lines.append(f"  fit  {step.name:<28} {detail}")
        else:
            lines.append(f"  eval {step.name:<28} checkpoint of {step.fit.name}"
                         + (f" as {step.method}" if step.method != step.fit.method else ""))
    return "\n".join(lines)
