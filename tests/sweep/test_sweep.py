"""`ttt sweep`: the spec is checked, the plan follows the paper's protocol, a tiny sweep writes its
summary, figures and TensorBoard runs, and reruns skip (or resume) what already finished."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from sweeps import run_sweep, tiny_sweep_spec  # tests/sweeps.py

from lightning_ttt.sweep.plan import Evaluation, Fit, plan
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
@pytest.mark.parametrize("recipe", SWEEP_RECIPES, ids=[p.name for p in SWEEP_RECIPES])
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
    assert get_dotted(spec.base, "model.config.window") == 1024 and get_dotted(spec.base, "model.config.mini_batch") == 128
    assert "swa/pretrain-01024" not in fits  # swa extends from fa's pretraining (identical while T <= k)
    assert get_dotted(fits["swa/extend-04096"].config, "model.init_from").endswith("runs/fa/pretrain-01024/checkpoints/last.ckpt")
    assert get_dotted(fits["e2e/extend-04096"].config, "model.init_from").endswith("runs/e2e/pretrain-01024/checkpoints/last.ckpt")
    thetas = {n: get_dotted(fits[f"fa/extend-{n:05d}"].config, "model.config.rope_theta") for n in spec.lengths}
    assert thetas == {2048: 20000.0, 4096: 40000.0, 8192: 100000.0, 16384: 200000.0}
    assert get_dotted(fits["e2e/extend-16384"].config, "model.config.rope_theta") is None  # e2e keeps the preset theta
    assert {n: get_dotted(fits[f"e2e/extend-{n:05d}"].config, "data.batch_size") for n in spec.lengths} == {
        2048: 16, 4096: 8, 8192: 4, 16384: 2}
    evals = [s for s in steps if isinstance(s, Evaluation)]
    assert len(evals) == 3 * 5 and all(e.fit.seq_len == e.seq_len or e.stage == "pretrain" for e in evals)


def test_grid_axes_cross_with_methods_and_where_rules_match_lists(tmp_path: Path) -> None:
    raw = tiny_sweep_spec()
    raw["sweep"]["methods"] = ["e2e"]
    del raw["sweep"]["pretrain"]["share"]
    raw["sweep"]["grid"] = {"model.config.mini_batch": [8, 16]}
    raw["sweep"]["where"] = [{"model.config.mini_batch": [8], "stage": "extend", "set": {"model.lr": 1.0e-4}}]
    steps = plan(load_spec(_write(tmp_path, raw)))
    fits = {s.name: s for s in steps if isinstance(s, Fit)}
    assert sorted(fits) == ["e2e-mini_batch=16/extend-00064", "e2e-mini_batch=16/pretrain-00032",
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
    with pytest.raises(ValueError, match="sweep point fa/extend-00064: trainer.max_steps must be set"):
        plan(load_spec(_write(tmp_path, raw)))


def test_missing_file_and_missing_section_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    (tmp_path / "fit.yaml").write_text("trainer: {max_steps: 1}\n")
    with pytest.raises(ValueError, match="expected a top-level `sweep:` section"):
        load_spec(tmp_path / "fit.yaml")


# ---------------------------------------------------------------------- a real tiny sweep
def test_tiny_sweep_writes_summary_both_figures_and_tensorboard_runs(tiny_sweep) -> None:
    out = tiny_sweep.out
    rows = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    by_point = {r["point"]: r for r in rows}
    assert list(by_point) == ["fa/pretrain-00032", "swa/pretrain-00032", "e2e/pretrain-00032",
                              "fa/extend-00064", "swa/extend-00064", "e2e/extend-00064"]
    # swa evaluates fa's pretrained weights: with T = 32 = window the two attentions are the same.
    assert by_point["swa/pretrain-00032"]["loss"] == pytest.approx(by_point["fa/pretrain-00032"]["loss"], abs=1e-6)
    for r in rows:
        fa = by_point[f"fa/{r['stage']}-{r['seq_len']:05d}"]
        assert r["loss_delta_fa"] == pytest.approx(r["loss"] - fa["loss"])
        assert r["windows"] == 256 // r["seq_len"] and r["tokens"] == r["windows"] * r["seq_len"]
        assert (out / r["per_position"]).is_file() and (out / r["checkpoint"]).is_file()
    assert by_point["swa/extend-00064"]["loss"] != by_point["fa/extend-00064"]["loss"]  # window 32 < 64 now
    for name in ("loss_vs_context", "loss_delta_vs_fa", "nll_by_position"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    runs = out / "runs"
    train = _events(runs / "e2e" / "extend-00064")
    assert "train/loss" in train.Tags()["scalars"]
    curve = _events(runs / "summary" / "e2e")
    assert [e.step for e in curve.Scalars("context/loss")] == [32, 64]
    assert [e.value for e in curve.Scalars("context/loss_delta_fa")] == pytest.approx(
        [by_point["e2e/pretrain-00032"]["loss_delta_fa"], by_point["e2e/extend-00064"]["loss_delta_fa"]])
    assert set(_events(runs / "summary" / "figures").Tags()["images"]) == {
        "tiny/loss_vs_context", "tiny/loss_delta_vs_fa", "tiny/nll_by_position"}
    hparams = _events(runs / "hparams" / "e2e" / "extend-00064").PluginTagToContent("hparams")
    assert "_hparams_/experiment" in hparams and "_hparams_/session_start_info" in hparams


def test_extension_runs_start_from_their_pretrained_checkpoint(tiny_sweep) -> None:
    runs = tiny_sweep.out / "runs"
    config = {m: yaml.safe_load((runs / m / "extend-00064" / "run.yaml").read_text()) for m in ("fa", "swa", "e2e")}
    assert config["e2e"]["model"]["init_from"] == str(runs / "e2e" / "pretrain-00032" / "checkpoints" / "last.ckpt")
    assert config["swa"]["model"]["init_from"] == str(runs / "fa" / "pretrain-00032" / "checkpoints" / "last.ckpt")
    assert config["fa"]["model"]["config"]["rope_theta"] == 20000.0 and config["fa"]["data"]["batch_size"] == 2
    assert not (runs / "swa" / "pretrain-00032" / "checkpoints").exists()  # no second pretraining for swa


def test_rerunning_the_same_command_skips_every_finished_point(tiny_sweep) -> None:
    checkpoints = sorted(tiny_sweep.out.rglob("*.ckpt"))
    before = {p: p.stat().st_mtime_ns for p in checkpoints}
    again = run_sweep(tiny_sweep.spec, tiny_sweep.out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("finished earlier, skipped") == 11
    assert "11 skipped" in again.stdout and " ...\n" not in again.stdout
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == before
    assert len((tiny_sweep.out / "summary.jsonl").read_text().splitlines()) == 6


def test_changing_a_finished_points_settings_is_refused(tiny_sweep, tmp_path: Path) -> None:
    raw = tiny_sweep_spec()
    raw["sweep"]["extend"]["set"]["trainer.max_steps"] = 3
    changed = run_sweep(_write(tmp_path, raw), tiny_sweep.out)
    assert changed.returncode == 2
    assert "sweep point fa/extend-00064 finished with other settings" in changed.stderr


def test_an_interrupted_fit_resumes_from_its_last_checkpoint(tiny_sweep, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(tiny_sweep.out, out)
    point = out / "runs" / "e2e" / "extend-00064"
    for marker in ("fit.done.json", "eval.done.json"):  # as if killed after the last checkpoint
        (point / marker).unlink()
    resumed = run_sweep(tiny_sweep.spec, out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {point / 'checkpoints' / 'last.ckpt'}" in resumed.stdout
    assert "9 skipped" in resumed.stdout and (point / "fit.done.json").is_file()
    assert len((out / "summary.jsonl").read_text().splitlines()) == 6


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
