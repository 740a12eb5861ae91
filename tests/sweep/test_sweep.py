"""`ttt sweep`: the spec is checked, the plan follows the paper's protocol, a tiny sweep writes its
summary, figures and TensorBoard runs, and reruns skip (or resume) what already finished."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from sweeps import run_sweep, tiny_sweep_spec  # tests/sweeps.py

from lightning_ttt.cli import main
from lightning_ttt.sweep.lock import LOCK, out_dir_lock
from lightning_ttt.sweep.plan import Evaluation, Fit, plan
from lightning_ttt.sweep.report import markdown_table
from lightning_ttt.sweep.run import check_configs
from lightning_ttt.sweep.spec import get_dotted, load_spec

REPO = Path(__file__).resolve().parents[2]
SWEEP_RECIPES = sorted((REPO / "recipes").rglob("sweep-*.yaml"))


def _write(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _events(path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(path), size_guidance={"images": 0, "scalars": 0}).Reload()


# ---------------------------------------------------------------------- spec and plan
@pytest.mark.parametrize("recipe", [pytest.param(p, id=p.name, marks=[pytest.mark.slow] * (p.name == "sweep-context.yaml"))
                                    for p in SWEEP_RECIPES])  # the 15-fit sweep loads only in make test
def test_sweep_recipes_plan_and_every_run_config_loads_through_the_cli(recipe: Path) -> None:
    spec = load_spec(recipe)
    steps = plan(spec)
    fits = [s for s in steps if isinstance(s, Fit)]
    assert {(f.stage, f.seq_len) for f in fits} >= {("extend", n) for n in spec.lengths}
    check_configs(spec, steps)


def test_debug_sweep_recipe_follows_the_paper_protocol_at_one_eighth_scale() -> None:
    spec = load_spec(REPO / "recipes/debug/sweep-context.yaml")
    steps = plan(spec)
    fits = {s.name: s for s in steps if isinstance(s, Fit)}
    assert spec.pretrain_len == 1024 and spec.lengths == [2048, 4096, 8192, 16384]
    assert spec.finetune_lengths == [1024, 2048, 4096, 8192, 16384]
    assert get_dotted(spec.base, "model.config.window") == 1024 and get_dotted(spec.base, "model.config.mini_batch") == 128
    assert "swa/pretrain-01024" not in fits  # swa extends from fa's pretraining (identical while T <= k)
    assert get_dotted(fits["swa/extend-04096"].config, "model.init_from").endswith("runs/fa/pretrain-01024/checkpoints/last.ckpt")
    assert get_dotted(fits["e2e/extend-04096"].config, "model.init_from").endswith("runs/e2e/pretrain-01024/checkpoints/last.ckpt")
    thetas = {n: get_dotted(fits[f"fa/extend-{n:05d}"].config, "model.config.rope_theta") for n in spec.lengths}
    assert thetas == {2048: 20000.0, 4096: 40000.0, 8192: 100000.0, 16384: 200000.0}
    assert get_dotted(fits["fa/extend-01024"].config, "model.config.rope_theta") is None  # the base length keeps it
    assert get_dotted(fits["e2e/extend-16384"].config, "model.config.rope_theta") is None  # e2e keeps the preset theta
    assert {n: get_dotted(fits[f"e2e/extend-{n:05d}"].config, "data.batch_size") for n in spec.finetune_lengths} == {
        1024: 32, 2048: 16, 4096: 8, 8192: 4, 16384: 2}


def _budget(fit: Fit) -> int:
    """Training tokens of one fit."""
    return get_dotted(fit.config, "trainer.max_steps") * get_dotted(fit.config, "data.batch_size") * fit.seq_len


def test_every_evaluated_point_is_a_fine_tune_with_the_same_budget_the_base_length_included() -> None:
    spec = load_spec(REPO / "recipes/debug/sweep-context.yaml")
    steps = plan(spec)
    fits = {s.name: s for s in steps if isinstance(s, Fit)}
    evals = {s.name: s for s in steps if isinstance(s, Evaluation)}
    assert sorted(evals) == sorted(f"{m}/extend-{n:05d}" for m in ("fa", "swa", "e2e") for n in spec.finetune_lengths)
    for ev in evals.values():  # no pretrained checkpoint is evaluated: every point had one fine-tune at its length
        assert ev.fit.stage == "extend" and ev.fit.seq_len == ev.seq_len
        pretrained = get_dotted(ev.fit.config, "model.init_from")
        owner = "fa" if ev.method == "swa" else ev.method
        assert pretrained.endswith(f"runs/{owner}/pretrain-01024/checkpoints/last.ckpt")
    assert {_budget(evals[name].fit) for name in evals} == {20 * 32768}
    assert {_budget(f) for f in fits.values() if f.stage == "pretrain"} == {200 * 16 * 1024}
    # The base-length fine-tune exists for every method; swa's is fa's (within the window it is the same model).
    assert {"fa/extend-01024", "e2e/extend-01024"} <= set(fits) and "swa/extend-01024" not in fits
    assert evals["swa/extend-01024"].fit is fits["fa/extend-01024"] and evals["swa/extend-01024"].method == "swa"
    assert steps.index(fits["e2e/extend-01024"]) < steps.index(fits["e2e/extend-02048"])


def test_swa_shares_fa_runs_only_where_they_are_the_same_model(tmp_path: Path) -> None:
    raw = tiny_sweep_spec([64])  # window 32
    raw["sweep"]["where"] = [{"method": "fa", "stage": "extend", "length": 32, "set": {"model.lr": 1.0e-4}}]
    fits = {s.name: s for s in plan(load_spec(_write(tmp_path, raw))) if isinstance(s, Fit)}
    assert "swa/pretrain-00032" not in fits  # length 32 = window, same settings: fa's pretraining serves both
    assert "swa/extend-00032" in fits  # same length, but fa's base fine-tune has another lr: swa runs its own
    assert get_dotted(fits["swa/extend-00032"].config, "model.init_from").endswith(
        "runs/fa/pretrain-00032/checkpoints/last.ckpt")
    raw = tiny_sweep_spec([64])
    raw["sweep"]["pretrain"]["seq_len"] = 48  # beyond the window: swa is no longer fa
    steps = plan(load_spec(_write(tmp_path, raw)))
    fits = {s.name: s for s in steps if isinstance(s, Fit)}
    assert {"swa/pretrain-00048", "swa/extend-00048", "swa/extend-00064"} <= set(fits)
    assert get_dotted(fits["swa/extend-00064"].config, "model.init_from").endswith(
        "runs/swa/pretrain-00048/checkpoints/last.ckpt")
    assert all(ev.fit.method == ev.method for ev in steps if isinstance(ev, Evaluation))


def test_dry_run_prints_the_protocol_and_the_base_length_fine_tunes(tmp_path: Path, capsys) -> None:
    spec = _write(tmp_path, tiny_sweep_spec([64]))
    assert main(["sweep", str(spec), "--out-dir", str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "protocol: pretrain at 32, fine-tune at 32, 64 (the base length too)" in out
    assert "share: swa reuses fa's runs where they are the same model" in out
    for method in ("fa", "e2e"):
        assert re.search(rf"fit  {method}/extend-00032 +max_steps=2 batch=4 tokens=256 lr=0.0004 "
                         rf"from {method}/pretrain-00032", out)
    assert re.search(r"eval swa/extend-00032 +checkpoint of fa/extend-00032 as swa", out)
    assert "every run config loads" in out and not (tmp_path / "out").exists()


def test_grid_axes_cross_with_methods_and_where_rules_match_lists(tmp_path: Path) -> None:
    raw = tiny_sweep_spec()
    raw["sweep"]["methods"] = ["e2e"]
    del raw["sweep"]["pretrain"]["share"]
    raw["sweep"]["grid"] = {"model.config.mini_batch": [8, 16]}
    raw["sweep"]["where"] = [{"model.config.mini_batch": [8], "stage": "extend", "set": {"model.lr": 1.0e-4}}]
    steps = plan(load_spec(_write(tmp_path, raw)))
    fits = {s.name: s for s in steps if isinstance(s, Fit)}
    assert sorted(fits) == ["e2e-mini_batch=16/extend-00032", "e2e-mini_batch=16/extend-00064",
                            "e2e-mini_batch=16/pretrain-00032", "e2e-mini_batch=8/extend-00032",
                            "e2e-mini_batch=8/extend-00064", "e2e-mini_batch=8/pretrain-00032"]
    assert get_dotted(fits["e2e-mini_batch=8/extend-00064"].config, "model.config.mini_batch") == 8
    assert get_dotted(fits["e2e-mini_batch=8/extend-00064"].config, "model.lr") == 1.0e-4
    assert get_dotted(fits["e2e-mini_batch=16/extend-00064"].config, "model.lr") == 4.0e-4
    assert get_dotted(fits["e2e-mini_batch=8/pretrain-00032"].config, "model.lr") is None


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("methods"), "sweep.methods: expected a non-empty list"),
    (lambda s: s.update(methods=["fa", "mamba"]), "'mamba' is not one of fa, swa, e2e"),
    (lambda s: s.update(extra=1), "unknown key 'extra'"),
    (lambda s: s["extend"].update(length=[64]), "sweep.extend: unknown key 'length'"),
    (lambda s: s["pretrain"].update(seq_len=0), "sweep.pretrain.seq_len: expected a positive integer"),
    (lambda s: s["extend"].update(tokens_per_batch=32), "tokens_per_batch=32 is less than one sequence of 64"),
    (lambda s: s["pretrain"].update(share={"e2e": "fa"}), "only fa and swa may share"),
    (lambda s: s.update(grid={"model.method": ["fa"]}), "methods and context lengths are set by sweep.methods"),
    (lambda s: s.update(where=[{"window": 3, "set": {}}]), "sweep.where[0]: unknown key 'window'"),
    (lambda s: s.update(where=[{"method": "fa"}]), "sweep.where[0]: expected a mapping with match keys and a `set:`"),
])
def test_bad_sweep_files_fail_with_one_line_naming_the_key(tmp_path: Path, edit, message: str) -> None:
    raw = tiny_sweep_spec()
    edit(raw["sweep"])
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")) as err:
        load_spec(_write(tmp_path, raw))
    assert "\n" not in str(err.value)


def test_a_stage_without_max_steps_is_an_error_naming_the_point(tmp_path: Path) -> None:
    raw = tiny_sweep_spec()
    del raw["sweep"]["extend"]["set"]["trainer.max_steps"]
    with pytest.raises(ValueError, match="sweep point fa/extend-00032: trainer.max_steps must be set"):
        plan(load_spec(_write(tmp_path, raw)))


def test_missing_file_and_missing_section_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    (tmp_path / "fit.yaml").write_text("trainer: {max_steps: 1}\n")
    with pytest.raises(ValueError, match="expected a top-level `sweep:` section"):
        load_spec(tmp_path / "fit.yaml")


def test_markdown_table_has_a_row_per_length_and_differences_to_full_attention() -> None:
    def row(method: str, length: int, loss: float, last: float) -> dict:
        return {"combo": method, "method": method, "seq_len": length, "loss": loss, "last_loss": last,
                "last_tokens": 512}

    rows = [row("fa", 1024, 2.5, 2.4), row("e2e", 1024, 2.0, 1.8),
            row("fa", 2048, 2.6, 2.5), row("e2e", 2048, 1.9, 1.7)]
    for r in rows:
        fa = next(f for f in rows if f["method"] == "fa" and f["seq_len"] == r["seq_len"])
        r["loss_delta_fa"], r["last_loss_delta_fa"] = r["loss"] - fa["loss"], r["last_loss"] - fa["last_loss"]
    lines = markdown_table(rows).splitlines()
    assert lines[0] == "| length | fa | e2e | e2e − fa | e2e − fa, last 512 tokens |"
    assert lines[2:] == ["| 1K | 2.500 | 2.000 | −0.500 | −0.600 |", "| 2K | 2.600 | 1.900 | −0.700 | −0.800 |"]


# ---------------------------------------------------------------------- a real tiny sweep
def test_tiny_sweep_writes_summary_both_figures_and_tensorboard_runs(tiny_sweep) -> None:
    out = tiny_sweep.out
    rows = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    by_point = {r["point"]: r for r in rows}
    assert list(by_point) == ["fa/extend-00032", "swa/extend-00032", "e2e/extend-00032",
                              "fa/extend-00064", "swa/extend-00064", "e2e/extend-00064"]
    # swa evaluates fa's base-length fine-tune: with T = 32 = window the two attentions are the same.
    assert by_point["swa/extend-00032"]["loss"] == pytest.approx(by_point["fa/extend-00032"]["loss"], abs=1e-6)
    assert by_point["swa/extend-00032"]["checkpoint"] == by_point["fa/extend-00032"]["checkpoint"]
    for r in rows:
        fa = by_point[f"fa/{r['stage']}-{r['seq_len']:05d}"]
        assert r["loss_delta_fa"] == pytest.approx(r["loss"] - fa["loss"])
        assert r["windows"] == 256 // r["seq_len"] and r["tokens"] == r["windows"] * r["seq_len"]
        assert (out / r["per_position"]).is_file() and (out / r["checkpoint"]).is_file()
    assert by_point["swa/extend-00064"]["loss"] != by_point["fa/extend-00064"]["loss"]  # window 32 < 64 now
    for name in ("loss_vs_context", "loss_delta_vs_fa", "nll_by_position"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "summary.md").read_text().splitlines()
    assert table[0].startswith("| length | fa | swa | e2e | swa − fa | e2e − fa |") and len(table) == 2 + 2
    assert table[2].startswith(f"| 32 | {by_point['fa/extend-00032']['loss']:.3f} | ")

    runs = out / "runs"
    train = _events(runs / "e2e" / "extend-00064")
    assert "train/loss" in train.Tags()["scalars"]
    curve = _events(runs / "summary" / "e2e")
    assert [e.step for e in curve.Scalars("context/loss")] == [32, 64]
    assert [e.value for e in curve.Scalars("context/loss_delta_fa")] == pytest.approx(
        [by_point["e2e/extend-00032"]["loss_delta_fa"], by_point["e2e/extend-00064"]["loss_delta_fa"]])
    assert set(_events(runs / "summary" / "figures").Tags()["images"]) == {
        "tiny/loss_vs_context", "tiny/loss_delta_vs_fa", "tiny/nll_by_position"}
    hparams = _events(runs / "hparams" / "e2e" / "extend-00064").PluginTagToContent("hparams")
    assert "_hparams_/experiment" in hparams and "_hparams_/session_start_info" in hparams


def test_fine_tunes_start_from_their_pretrained_checkpoint(tiny_sweep) -> None:
    runs = tiny_sweep.out / "runs"
    config = {m: yaml.safe_load((runs / m / "extend-00064" / "run.yaml").read_text()) for m in ("fa", "swa", "e2e")}
    assert config["e2e"]["model"]["init_from"] == str(runs / "e2e" / "pretrain-00032" / "checkpoints" / "last.ckpt")
    assert config["swa"]["model"]["init_from"] == str(runs / "fa" / "pretrain-00032" / "checkpoints" / "last.ckpt")
    assert config["fa"]["model"]["config"]["rope_theta"] == 20000.0 and config["fa"]["data"]["batch_size"] == 2
    assert not (runs / "swa" / "pretrain-00032" / "checkpoints").exists()  # no second pretraining for swa
    for method in ("fa", "e2e"):  # the base-length fine-tune: same budget (2 steps x 128 tokens) as at 64
        base = yaml.safe_load((runs / method / "extend-00032" / "run.yaml").read_text())
        assert base["model"]["init_from"] == str(runs / method / "pretrain-00032" / "checkpoints" / "last.ckpt")
        assert base["data"]["batch_size"] * 32 == config[method]["data"]["batch_size"] * 64 == 128
        assert (runs / method / "extend-00032" / "checkpoints" / "last.ckpt").is_file()
    assert not (runs / "swa" / "extend-00032" / "checkpoints").exists()  # swa's base fine-tune is fa's


def test_rerunning_the_same_command_skips_every_finished_point(tiny_sweep) -> None:
    checkpoints = sorted(tiny_sweep.out.rglob("*.ckpt"))
    before = {p: p.stat().st_mtime_ns for p in checkpoints}
    again = run_sweep(tiny_sweep.spec, tiny_sweep.out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("finished earlier, skipped") == 13
    assert "13 skipped" in again.stdout and " ...\n" not in again.stdout
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == before
    assert len((tiny_sweep.out / "summary.jsonl").read_text().splitlines()) == 6


def test_changing_a_finished_points_settings_is_refused(tiny_sweep, tmp_path: Path) -> None:
    raw = tiny_sweep_spec()
    raw["sweep"]["extend"]["set"]["trainer.max_steps"] = 3
    changed = run_sweep(_write(tmp_path, raw), tiny_sweep.out)
    assert changed.returncode == 2
    assert "sweep point fa/extend-00032 finished with other settings" in changed.stderr


def test_an_interrupted_fit_resumes_from_its_last_checkpoint(tiny_sweep, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(tiny_sweep.out, out)
    point = out / "runs" / "e2e" / "extend-00064"
    for marker in ("fit.done.json", "eval.done.json"):  # as if killed after the last checkpoint
        (point / marker).unlink()
    resumed = run_sweep(tiny_sweep.spec, out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    step = torch.load(point / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert f"resuming from {point / 'checkpoints' / 'last.ckpt'} (step {step})" in resumed.stdout
    assert "11 skipped" in resumed.stdout and (point / "fit.done.json").is_file()
    assert len((out / "summary.jsonl").read_text().splitlines()) == 6
    # the resumed run writes into the point's old TensorBoard version and purges what followed the checkpoint
    events = sorted(point.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    starts = [e.step for e in EventFileLoader(str(events[-1])).Load()
              if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert starts == [step]


@pytest.mark.slow  # runs `ttt sweep` in subprocesses
def test_a_failing_point_stops_the_sweep_and_names_its_log(tmp_path: Path) -> None:
    raw = tiny_sweep_spec()
    raw["sweep"]["methods"] = ["e2e"]
    raw["sweep"]["pretrain"] = {"seq_len": 24, "set": {"trainer.max_steps": 1}}  # not a multiple of b = 16
    failed = run_sweep(_write(tmp_path, raw), tmp_path / "out")
    log = tmp_path / "out" / "runs" / "e2e" / "pretrain-00024" / "fit.log"
    assert failed.returncode == 1
    assert f"sweep point e2e/pretrain-00024 failed (exit 2); its output is in {log}" in failed.stderr
    assert "ttt fit: error: data.seq_len=24 must be a multiple of the mini-batch size b=16" in log.read_text()
    assert not (log.parent / "fit.done.json").exists()


# ---------------------------------------------------------------------- one writer, children die with the sweep
def test_a_second_sweep_on_the_same_out_dir_is_refused_naming_the_pid(tmp_path: Path, capsys) -> None:
    spec, out = _write(tmp_path, tiny_sweep_spec()), tmp_path / "out"
    out.mkdir()
    (out / LOCK).write_text(f"{os.getpid()}\n")  # a live process holds it
    assert main(["sweep", str(spec), "--out-dir", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"is in use by another ttt sweep (PID {os.getpid()}" in err and len(err.strip().splitlines()) == 1
    assert (out / LOCK).read_text() == f"{os.getpid()}\n" and sorted(p.name for p in out.iterdir()) == [LOCK]


def test_a_stale_lock_is_taken_over_and_the_lock_is_removed_at_exit(tmp_path: Path, capsys) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK).write_text(dead.stdout)
    with out_dir_lock(tmp_path) as lock:
        assert lock.read_text() == f"{os.getpid()}\n"
        with pytest.raises(FileExistsError, match=f"PID {os.getpid()}"), out_dir_lock(tmp_path):
            pass
    assert f"taking over the stale lock {tmp_path / LOCK} (PID {dead.stdout.strip()} is not running)" \
        in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _endless_sweep(tmp_path: Path, out: Path) -> tuple[subprocess.Popen, list[int]]:
    """A `ttt sweep` subprocess whose first point trains until stopped, and the PIDs of its running children."""
    raw = tiny_sweep_spec()
    raw["sweep"].update(methods=["e2e"], where=[])
    del raw["sweep"]["pretrain"]["share"]
    raw["sweep"]["pretrain"]["set"]["trainer.max_steps"] = 10**6  # runs until stopped
    sweep = subprocess.Popen([sys.executable, "-m", "lightning_ttt", "sweep", str(_write(tmp_path, raw)),
                              "--out-dir", str(out), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (children := _children(sweep.pid)) and time.monotonic() < deadline and sweep.poll() is None:
        time.sleep(0.2)
    assert children, sweep.stderr.read().decode() if sweep.poll() is not None else "no child started"
    return sweep, children


@pytest.mark.slow  # a subprocess sweep stopped by SIGTERM
def test_stopping_the_sweep_stops_its_running_point(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sweep, children = _endless_sweep(tmp_path, out)
    sweep.send_signal(signal.SIGTERM)
    assert sweep.wait(timeout=120) == 128 + signal.SIGTERM
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (out / LOCK).exists()


@pytest.mark.slow  # a subprocess sweep killed by SIGKILL
def test_a_killed_sweep_leaves_no_running_point(tmp_path: Path) -> None:
    sweep, children = _endless_sweep(tmp_path, tmp_path / "out")
    sweep.kill()  # no handler runs: the child must notice its parent's death by itself
    assert sweep.wait(timeout=60) == -signal.SIGKILL
    deadline = time.monotonic() + 120
    while (alive := [pid for pid in children if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in alive:  # never leave a stray trainer behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not alive


def _alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"  # a zombie has exited
