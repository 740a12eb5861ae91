"""``ttt sweep``: the paper's protocol over a grid, one process per point, finished points skipped.

For every method (x grid point): pretrain at the base length, then fine-tune the pretrained
checkpoint at the base length and at every target length, evaluating each fine-tune at its own
length with ``ttt eval-context`` (the protocol and its budget: ``sweep.plan``). Runs live in
``<out>/runs/<method...>/<stage>-<length>/`` (a TensorBoard run each, grouped by method);
``<out>/summary.jsonl`` and the comparison figures are rewritten after every evaluation. A point is finished when its ``*.done.json`` marker exists; a rerun skips it, and
a fit interrupted midway resumes from its ``last.ckpt``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

from lightning_ttt.io import atomic_write_json, atomic_write_text
from lightning_ttt.lit.cli import cli_main
from lightning_ttt.sweep.lock import die_with_parent, out_dir_lock, stop_group, stop_on_signals
from lightning_ttt.sweep.plan import OUT, Evaluation, Fit, Step, describe, eval_args, plan, read_marker
from lightning_ttt.sweep.report import write_report
from lightning_ttt.sweep.spec import SweepSpec, load_spec


class SweepRunner:
    """Runs a plan: each step in its own process, logs beside the run, done markers, resume, report."""

    def __init__(self, spec: SweepSpec, echo: bool = True) -> None:
        self.spec, self.echo = spec, echo
        self.out = spec.out_dir.resolve()

    def run(self, steps: list[Step]) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
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
            step = checkpoint_step(last)
            print(f"  resuming from {last} (step {step})", flush=True)
            # the run logs into its old TensorBoard version: drop what it logged after the checkpoint
            command += ["--ckpt_path", str(last), "--trainer.logger.init_args.purge_step", str(step)]
        seconds = self._call(command, run_dir / "fit.log", fit.name)
        if not last.is_file():
            raise RuntimeError(f"sweep point {fit.name}: training finished without {last}")
        self._mark(fit, seconds, checkpoint=str(last.relative_to(run_dir)))

    def _run_eval(self, ev: Evaluation) -> None:
        args = [a.replace(OUT, str(self.out)) for a in eval_args(self.spec, ev)]
        command = [sys.executable, "-m", "lightning_ttt", "eval-context", *args, "--overwrite"]  # an unfinished one
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
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
                                       preexec_fn=partial(die_with_parent, os.getpid()))
            try:
                self._copy_output(process, log)
                code = process.wait()
            except BaseException:  # Ctrl-C, SIGTERM (stop_on_signals) or a failed write: the child goes too
                stop_group(process)
                raise
        if code != 0:
            raise RuntimeError(f"sweep point {name} failed (exit {code}); its output is in {log_path}")
        return time.perf_counter() - started

    def _copy_output(self, process: subprocess.Popen, log) -> None:
        assert process.stdout is not None
        while chunk := process.stdout.read1(65536):
            log.write(chunk)
            log.flush()
            if self.echo:
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()


def checkpoint_step(path: Path) -> int:
    """The global step a Lightning checkpoint was saved at (tensors memory-mapped, not read)."""
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def check_configs(spec: SweepSpec, steps: list[Step]) -> None:
    """Load every fit's config through the real LightningCLI parser (instantiates model, data, trainer)."""
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(sys, "argv", ["ttt"]):
        for step in steps:
            if isinstance(step, Fit):
                path = Path(tmp) / "run.yaml"
                path.write_text(yaml.safe_dump(step.config).replace(OUT, tmp))
                try:
                    cli_main(["--config", str(path)], run=False)
                except SystemExit as err:
                    raise ValueError(f"sweep point {step.name}: its LightningCLI config does not load (see above)") from err


def sweep(spec: str, /, *, out_dir: str | None = None, dry_run: bool = False, quiet: bool = False) -> int:
    """Pretrain, fine-tune and evaluate every method at every context length of a sweep file.

    Finished points are skipped; an interrupted training run resumes from its last checkpoint. Exits 1
    when a point fails (finished points stay finished). One sweep at a time per output directory
    (``sweep.lock`` holds its PID); stopping the sweep (Ctrl-C, SIGTERM) stops its running point too.

    Args:
        spec: sweep YAML (a top-level `sweep:` section), e.g. recipes/debug/sweep-context.yaml.
        out_dir: output directory (default: the file's out_dir, else runs/<name>).
        dry_run: print the plan and check every run's config through the CLI, run nothing.
        quiet: keep the runs' output in their logs only.
    """
    loaded = load_spec(spec, out_dir)
    steps = plan(loaded)
    if dry_run:
        print(describe(loaded, steps))
        check_configs(loaded, steps)
        print("every run config loads")
        return 0
    try:
        with stop_on_signals(), out_dir_lock(loaded.out_dir.resolve()):
            return SweepRunner(loaded, echo=not quiet).run(steps)
    except RuntimeError as err:  # a point failed; its log holds the details
        print(f"ttt sweep: {err}", file=sys.stderr)
        return 1
