"""The `ttt` command: tool options from typed signatures, one error style, help for every tool."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Literal, Sequence

import pytest

from lightning_ttt.cli import TOOLS, ToolParser, main

E2E = str(Path(__file__).resolve().parents[1] / "recipes/debug/e2e.yaml")


def example(path: str, /, *, lengths: list[int], methods: Sequence[Literal["fa", "swa"]] = ("fa", "swa"),
            rate: float = 0.5, window: int | None = None, config: list[str] | None = None, greedy: bool = False,
            progress: bool = True) -> int:
    """Do an example thing.

    Args:
        path: a file.
        lengths: context lengths.
        methods: methods to run.
        rate: a rate.
        window: a window.
        config: YAML files.
        greedy: argmax.
        progress: show progress.
    """
    return 0


def parse(*argv: str) -> dict:
    return ToolParser("example", example).parse(argv)


def test_signature_conventions() -> None:
    values = parse("a.txt", "--lengths", "1024", "4096", "--greedy", "--no-progress", "--window", "7")
    assert values == {"path": "a.txt", "lengths": [1024, 4096], "methods": ["fa", "swa"], "rate": 0.5, "window": 7,
                      "config": None, "greedy": True, "progress": False}
    assert parse("a", "--lengths=8", "--methods", "swa", "--window", "null")["methods"] == ["swa"]
    assert parse("a", "--lengths", "8", "--rate", "-0.5")["rate"] == -0.5


def test_repeated_list_options_add_up() -> None:
    values = parse("a", "--config", "x.yaml", "--lengths", "1", "--config", "y.yaml", "z.yaml", "--lengths", "2")
    assert values["config"] == ["x.yaml", "y.yaml", "z.yaml"] and values["lengths"] == [1, 2]


@pytest.mark.parametrize("argv, message", [
    (["a", "--lengths", "x"], "--lengths: expected an integer, got 'x'"),
    (["a", "--lengths", "1", "--methods", "fa", "mamba"], "--methods: expected one of fa, swa, got 'mamba'"),
    (["a", "--lengths", "1", "--window", "wide"], "--window: expected an integer or null, got 'wide'"),
    (["--lengths", "1"], "missing PATH"),
    (["a"], "missing --lengths"),
    (["a", "--lengths", "1", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_options_are_one_line_naming_the_option(argv, message) -> None:
    with pytest.raises(ValueError) as err:
        parse(*argv)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize("command", [name for name, tool in TOOLS.items() if not tool.fit_settings])
def test_every_tool_documents_every_option(command: str, capsys) -> None:
    tool = TOOLS[command]
    function = getattr(importlib.import_module(tool.module), tool.function)
    parser = ToolParser(command, function)
    for name, help in ((a.dest, a.help) for a in parser.parser._actions if a.dest != "help"):
        assert help, f"ttt {command}: {name} has no help (add it to the docstring's Args section)"
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: ttt {command}")
    for name, param in inspect.signature(function).parameters.items():
        assert parser.options[name] in out, (command, name)


@pytest.mark.parametrize("command", [name for name, tool in TOOLS.items() if tool.fit_settings])
def test_tools_taking_fit_settings_show_fit_options(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit:  # LightningCLI's parser prints its help and exits
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exit.value.code == 0 and out.startswith(f"usage: ttt {command}")
    assert all(option in out for option in ("--config", "--model.config.window", "--data.tokenizer", "--trainer.devices"))


def test_tool_errors_exit_2_with_one_line(tmp_path, capsys) -> None:
    assert main(["plan", "--config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ttt plan: error: ") and "nope.yaml" in err and len(err.strip().splitlines()) == 1
    assert main(["eval-context", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "ttt eval-context: error: missing --lengths (ttt eval-context --help)"
    assert main(["eval-context", "--lengths", "32", "--out", str(tmp_path)]) == 2  # CKPT or --model-dir
    assert capsys.readouterr().err.strip() == ("ttt eval-context: error: give exactly one of a checkpoint (CKPT) "
                                               "or an exported model directory (--model-dir)")


def test_lightning_settings_errors_exit_2_with_one_line(capsys) -> None:
    assert main(["fit", "--config", E2E, "--trainer.max_steps", "many"]) == 2
    assert capsys.readouterr().err.strip() == "ttt fit: error: --trainer.max_steps: expected int. Got value: many"
    assert main(["fit", "--config", E2E, "--model.preset", "huge"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after Lightning's "Seed set to 0"
    assert last.startswith("ttt fit: error: unknown preset 'huge'; expected one of debug")


def test_usage_lists_every_tool(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name}" in out for name in TOOLS) and "fit | validate" in out
    assert main([]) == 2


@pytest.mark.parametrize("command", ["fitt", "predict", "--config"])
def test_an_unknown_command_lists_every_command_in_one_line(command: str, capsys) -> None:
    assert main([command]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ttt: error: unknown command {command!r}; expected one of ") and err.count("\n") == 1
    assert all(name in err for name in ("fit", "validate", "test", *TOOLS))


def test_predict_is_not_offered(capsys) -> None:
    """The model has no prediction output: `predict` is neither a subcommand nor in the usage."""
    from lightning_ttt.lit.cli import TTTLightningCLI

    assert set(TTTLightningCLI.subcommands()) == {"fit", "validate", "test"}
    assert main(["--help"]) == 0
    assert "predict" not in capsys.readouterr().out


def test_third_party_deprecations_and_tips_are_quiet_ours_are_not(caplog) -> None:
    import logging
    import warnings

    from lightning.pytorch.utilities import rank_zero_info

    from lightning_ttt.cli import quiet_third_party

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        for module in ("lightning.pytorch.utilities._pytree", "torch.utils._pytree", "lightning_ttt.data.stream"):
            for category in (FutureWarning, DeprecationWarning, UserWarning):
                warnings.warn_explicit(f"{module} {category.__name__}", category, "x.py", 1, module=module)
    shown = sorted(str(w.message) for w in caught)
    assert shown == ["lightning.pytorch.utilities._pytree UserWarning", "lightning_ttt.data.stream DeprecationWarning",
                     "lightning_ttt.data.stream FutureWarning", "lightning_ttt.data.stream UserWarning",
                     "torch.utils._pytree UserWarning"]
    with caplog.at_level(logging.INFO):
        rank_zero_info("\N{ELECTRIC LIGHT BULB} Tip: try a hosted logger")
        rank_zero_info("GPU available: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False"]


@pytest.mark.slow  # a subprocess: what a user sees
def test_a_fit_prints_no_tips_or_third_party_deprecations(tmp_path) -> None:
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "lightning_ttt", "fit", "--config", E2E, "--trainer.max_steps=1",
                          "--trainer.limit_val_batches=0", "--data.max_val_windows=1", "--data.seq_len=64",
                          f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.enable_progress_bar=false"],
                         capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-2000:]
    assert "`Trainer.fit` stopped: `max_steps=1` reached" in output
    assert "Tip" not in output and "deprecated" not in output.lower() and "Warning" not in output, output
