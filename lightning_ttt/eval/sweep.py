"""``ttt sweep``: the paper's protocol over a grid, one process per point, finished points skipped.

For every method (x grid point): pretrain at the base length, then extend (fine-tune from the
pretrained checkpoint) at every target length, evaluating each checkpoint at its own length with
``ttt eval-context``. Runs live in ``<out>/runs/<method...>/<stage>-<length>/`` (a TensorBoard run
each, grouped by method); ``<out>/summary.jsonl`` and the comparison figures are rewritten after
every evaluation. A point is finished when its ``*.done.json`` marker exists; a rerun skips it, and
a fit interrupted midway resumes from its ``last.ckpt``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_ttt.eval.sweep_spec import SweepSpec, deep_merge, get_dotted, load_spec
from lightning_ttt.io import atomic_write_json, atomic_write_text

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


class SweepRunner:
    """Runs a plan: each step in its own process, logs beside the run, done markers, resume, report."""

    def __init__(self, spec: SweepSpec, echo: bool = True) -> None:
        self.spec, self.echo = spec, echo
        self.out = spec.out_dir.resolve()

    def run(self, steps: list[Step]) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        from lightning_ttt.eval.sweep_report import write_report

        started = time.perf_counter()
        done = skipped = 0
        rows = None  # the report is rebuilt after each evaluation that ran, else once at the end
        for i, step in enumerate(steps, 1):
            label = f"[{i}/{len(steps)}] {'fit ' if isinstance(step, Fit) else 'eval'} {step.name}"
            if self._finished(step):
                print(f"{label}: finished earlier, skipped", flush=True)
                skipped += 1
                continue
            print(f"{label} ...", flush=True)
            t0 = time.perf_counter()
            self._run_fit(step) if isinstance(step, Fit) else self._run_eval(step)
            print(f"{label}: done in {time.perf_counter() - t0:.0f} s", flush=True)
            done += 1
            rows = write_report(self.spec, steps, self.out) if isinstance(step, Evaluation) else None
        if rows is None:
            rows = write_report(self.spec, steps, self.out)
        print(f"sweep {self.spec.name}: {done} steps run, {skipped} skipped, {len(rows)} points evaluated in "
              f"{time.perf_counter() - started:.0f} s; summary {self.out / 'summary.jsonl'}; "
              f"tensorboard --logdir {self.out / 'runs'}", flush=True)
        return 0

    # ------------------------------------------------------------------ markers
    def run_dir(self, step: Step) -> Path:
        return self.out / step.directory

    def fingerprint(self, step: Step) -> str:
        payload = step.config if isinstance(step, Fit) else eval_args(self.spec, step)
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _finished(self, step: Step) -> bool:
        marker = read_marker(self.out, step)
        if marker is None:
            return False
        if marker.get("fingerprint") != self.fingerprint(step):
            raise ValueError(f"sweep point {step.name} finished with other settings ({self.run_dir(step) / step.MARKER}); "
                             f"delete {self.run_dir(step)} to rerun it, or give the sweep another out_dir")
        return True

    def _mark(self, step: Step, seconds: float, **extra: Any) -> None:
        atomic_write_json(self.run_dir(step) / step.MARKER, {
            "fingerprint": self.fingerprint(step), "seconds": round(seconds, 1),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra})

    # ------------------------------------------------------------------ steps
    def _run_fit(self, fit: Fit) -> None:
        run_dir = self.run_dir(fit)
        config_path = run_dir / "run.yaml"
        text = yaml.safe_dump(fit.config, sort_keys=False).replace(OUT, str(self.out))
        atomic_write_text(config_path, f"# written by `ttt sweep` for point {fit.name}\n{text}")
        command = [sys.executable, "-m", "lightning_ttt", "fit", "--config", str(config_path)]
        last = self.out / fit.checkpoint
        if last.is_file():  # an interrupted run: continue where it stopped
            print(f"  resuming from {last}", flush=True)
            command += ["--ckpt_path", str(last)]
        seconds = self._call(command, run_dir / "fit.log", fit.name)
        if not last.is_file():
            raise RuntimeError(f"sweep point {fit.name}: training finished without {last}")
        self._mark(fit, seconds, checkpoint=str(last.relative_to(run_dir)))

    def _run_eval(self, ev: Evaluation) -> None:
        args = [a.replace(OUT, str(self.out)) for a in eval_args(self.spec, ev)]
        command = [sys.executable, "-m", "lightning_ttt", "eval-context", *args]
        seconds = self._call(command, self.run_dir(ev) / "eval.log", ev.name)
        self._mark(ev, seconds)

    def _call(self, command: list[str], log_path: Path, name: str) -> float:
        """Run ``command``, copying its output to ``log_path`` (and the terminal when echoing)."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with open(log_path, "ab") as log:
            log.write(f"$ {' '.join(command)}\n".encode())
            log.flush()
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
            assert process.stdout is not None
            while chunk := process.stdout.read1(65536):
                log.write(chunk)
                log.flush()
                if self.echo:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.buffer.flush()
            code = process.wait()
        if code != 0:
            raise RuntimeError(f"sweep point {name} failed (exit {code}); its output is in {log_path}")
        return time.perf_counter() - started


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


def check_configs(spec: SweepSpec, steps: list[Step]) -> None:
    """Load every fit's config through the real LightningCLI parser (instantiates model, data, trainer)."""
    import tempfile
    from unittest import mock

    from lightning_ttt.lit.cli import cli_main

    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(sys, "argv", ["ttt"]):
        for step in steps:
            if isinstance(step, Fit):
                path = Path(tmp) / "run.yaml"
                path.write_text(yaml.safe_dump(step.config).replace(OUT, tmp))
                try:
                    cli_main(["--config", str(path)], run=False)
                except SystemExit as err:
                    raise ValueError(f"sweep point {step.name}: its LightningCLI config does not load (see above)") from err


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ttt sweep",
                                     description="Pretrain, extend and evaluate every method at every context "
                                                 "length of a sweep file; finished points are skipped.")
    parser.add_argument("spec", help="sweep YAML (a top-level `sweep:` section), e.g. recipes/debug/sweep-context.yaml")
    parser.add_argument("--out-dir", default=None, help="output directory (default: the file's out_dir, else runs/<name>)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and check every run's config through the CLI, run nothing")
    parser.add_argument("--quiet", action="store_true", help="keep the runs' output in their logs only")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec, args.out_dir)
        steps = plan(spec)
        if args.dry_run:
            print(describe(spec, steps))
            check_configs(spec, steps)
            print("every run config loads")
            return 0
        return SweepRunner(spec, echo=not args.quiet).run(steps)
    except (FileNotFoundError, ValueError) as err:
        print(f"ttt sweep: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # a point failed; finished points stay finished
        print(f"ttt sweep: {err}", file=sys.stderr)
        return 1
