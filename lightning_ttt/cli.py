"""The ``ttt`` command: Lightning's subcommands (``fit``, ``validate``, ...) plus the project's tools.

Every tool is a plain function with a typed signature and a Google-style docstring; its command line
is built from them through jsonargparse (the types are checked by jsonargparse, the help comes from
the docstring), so the options are documented where they are used:

* positional-only parameters (before ``/``) are positional arguments, e.g. ``CKPT``;
* other parameters are options, ``max_new_tokens`` -> ``--max-new-tokens`` (required without a default);
* ``bool`` parameters are flags: ``--name`` when the default is False, ``--no-name`` when it is True;
* ``list[...]`` parameters take one or more values (``--lengths 1024 4096``); a repeated option adds
  its values (``--config a.yaml --config b.yaml``).

**Adding a tool**: write ``def my_tool(path: str, /, *, steps: int = 10, verbose: bool = False) -> int``
in the module where it belongs, with a docstring whose first line says what it does and whose
``Args:`` section gives one line per parameter; return the exit code (``None`` means 0). Raise
``ValueError`` or ``OSError`` (``FileNotFoundError``, ...) for bad settings or input, with a message
that names the option: the command then prints ``ttt my-tool: error: <message>`` and exits 2. Any
other exception is a bug and keeps its traceback. Then add one line to ``TOOLS`` below and a test
that runs the command. A tool that describes a run (``ttt plan``) takes ``ttt fit``'s settings instead:
``fit_settings=True``, and its function gets the arguments as given (``tools.recipe.parse_recipe``).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
import sys
import types
import typing
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

from lightning_ttt.threads import use_default_threads

INPUT_ERRORS = (ValueError, OSError)  # bad settings or input: one line, exit 2; anything else keeps its traceback


class Tool(NamedTuple):
    module: str
    function: str
    synopsis: str  # arguments shown by `ttt --help`
    fit_settings: bool = False  # takes ``ttt fit``'s settings: the function gets the arguments as they are


TOOLS: dict[str, Tool] = {
    "verify-reference": Tool("lightning_ttt.tools.verify", "verify_reference", "FIXTURE.npz [--dtype float64]"),
    "prepare": Tool("lightning_ttt.data.prepare", "prepare_command", "SOURCE... --out DIR [--tokenizer T]"),
    "export": Tool("lightning_ttt.infer.cli", "export", "CKPT --out DIR"),
    "import-jax": Tool("lightning_ttt.convert.cli", "import_jax_command",
                       "ROOT --out DIR [--preset NAME | --config FILE] [--step N]"),
    "verify-import": Tool("lightning_ttt.tools.verify_import", "verify_import_command",
                          "DIR REFERENCE.npz [--dtype float64]"),
    "convert-hf": Tool("lightning_ttt.convert.hf", "convert_hf_command", "SOURCE --out DIR --method fa|swa|e2e"),
    "generate": Tool("lightning_ttt.infer.cli", "generate", "(--ckpt CKPT | --model-dir DIR) [--prompt-file F]"),
    "plan": Tool("lightning_ttt.tools.plan", "plan_command", "--config RECIPE [--config ...] [--key value ...]",
                 fit_settings=True),
    "bench": Tool("lightning_ttt.infer.bench", "bench", "[--preset NAME | --model-dir DIR] [--lengths 1024 4096 ...]"),
    "niah": Tool("lightning_ttt.eval.niah.cli", "niah", "(--ckpt CKPT | --model-dir DIR) --lengths ... [--haystack F]"),
    "eval-context": Tool("lightning_ttt.eval.context", "eval_context",
                         "(CKPT | --model-dir DIR --data-config F) --lengths 1024 4096 ... --out DIR"),
    "sweep": Tool("lightning_ttt.sweep.run", "sweep", "SWEEP.yaml [--dry-run]"),
}

LIGHTNING = ("fit", "validate", "test")  # no predict: the model has no prediction output (ttt generate writes text)


def usage() -> str:
    width = max(len(name) for name in TOOLS)
    tools = "\n".join(f"  {name:<{width}}  {tool.synopsis}" for name, tool in TOOLS.items())
    return (f"usage: ttt <command> [options]   (ttt <command> --help for its options)\n\n"
            f"training and evaluation (LightningCLI):\n"
            f"  {' | '.join(LIGHTNING)}   --config recipes/debug/e2e.yaml [--config more.yaml] [--key value ...]\n\n"
            f"tools:\n{tools}\n")


# ---------------------------------------------------------------------- typed signature -> parser
def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _list_item(annotation: Any) -> Any | None:
    """``T`` for ``list[T]``, ``Sequence[T]`` or their ``Optional``; else None."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) in (list, Sequence) and typing.get_args(annotation):
        return typing.get_args(annotation)[0]
    return None


def _describe(annotation: Any) -> str:
    """How a value of ``annotation`` is spelled, for error messages."""
    item = _list_item(annotation)
    if item is not None:
        return f"one or more of {_describe(item)}"
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        annotation, getattr(annotation, "__name__", str(annotation)))


class ToolParser:
    """A jsonargparse parser for ``function`` (see the module docstring for the conventions)."""

    def __init__(self, command: str, function: Callable[..., Any]) -> None:
        from docstring_parser import parse as parse_docstring
        from jsonargparse import ArgumentParser

        self.command, self.function = command, function
        doc = parse_docstring(inspect.getdoc(function) or "")
        description = "\n\n".join(part for part in (doc.short_description, doc.long_description) if part)
        helps = {p.arg_name: " ".join((p.description or "").split()) for p in doc.params}
        self.parser = ArgumentParser(prog=f"ttt {command}", description=description, exit_on_error=False)
        self.hints = typing.get_type_hints(function)
        self.options: dict[str, str] = {}  # parameter -> its option (or positional) name
        self.lists: set[str] = set()  # options that take several values
        for name, param in inspect.signature(function).parameters.items():
            self._add(name, param, self.hints.get(name, str), helps.get(name, ""))

    def _add(self, name: str, param: inspect.Parameter, annotation: Any, help: str) -> None:
        required = param.default is inspect.Parameter.empty
        item = _list_item(annotation)
        default = list(param.default) if item is not None and isinstance(param.default, tuple) else param.default
        many = {"type": item, "nargs": "+"} if item is not None else {"type": annotation}
        if param.kind is inspect.Parameter.POSITIONAL_ONLY:
            self.options[name] = name.upper()
            if not required:
                many.update(nargs="*" if item is not None else "?", default=default)
            self.parser.add_argument(name, metavar=name.upper(), help=help, **many)
            return
        option = _option(name)
        if annotation is bool:
            if param.default:
                option = _option(f"no_{name}")
                self.parser.add_argument(option, dest=name, action="store_false", help=help)
            else:
                self.parser.add_argument(option, dest=name, action="store_true", help=help)
            self.options[name] = option
            return
        self.options[name] = option
        if item is not None:
            self.lists.add(option)
        kwargs: dict[str, Any] = {"required": True} if required else {"default": default}
        self.parser.add_argument(option, dest=name, metavar=name.upper(), help=help, **kwargs, **many)

    def parse(self, argv: Sequence[str]) -> dict[str, Any]:
        from jsonargparse import ArgumentError

        try:
            parsed = self.parser.parse_args(self._merge_repeated(list(argv)))
        except ArgumentError as err:
            raise ValueError(self._explain(str(err))) from None
        return {name: parsed[name] for name in self.options}

    def call(self, values: dict[str, Any]) -> int:
        positional = [values.pop(name) for name, p in inspect.signature(self.function).parameters.items()
                      if p.kind is inspect.Parameter.POSITIONAL_ONLY]
        code = self.function(*positional, **values)
        return 0 if code is None else int(code)

    def _merge_repeated(self, argv: list[str]) -> list[str]:
        """``--config a --lengths 1 --config b c`` -> ``--lengths 1 --config a b c``: one occurrence per list option."""
        rest: list[str] = []
        gathered: dict[str, list[str]] = {}
        i = 0
        while i < len(argv):
            option, _, inline = argv[i].partition("=")
            i += 1
            if option not in self.lists:
                rest.append(argv[i - 1])
                continue
            values = gathered.setdefault(option, [])
            values += [inline] if inline else []
            while i < len(argv) and not _is_option(argv[i]):
                values.append(argv[i])
                i += 1
        return rest + [token for option, values in gathered.items() for token in (option, *values)]

    def _explain(self, message: str) -> str:
        """jsonargparse's multi-line message as one line naming the option and the expected values."""
        missing = re.search(r"arguments are required: (.*)", message)
        if missing:
            names = [self.options.get(name.strip(), name.strip()) for name in missing.group(1).split(",")]
            return f"missing {', '.join(names)} (ttt {self.command} --help)"
        key = re.search(r'Parser key "([\w.]+)"', message)
        if key is None:
            return message.strip().splitlines()[0]
        name = key.group(1)
        got = re.findall(r"(?:Got|Given) value: (.*)", message)
        value = f", got {got[-1].strip()!r}" if got else ""
        annotation = self.hints.get(name, str)
        return f"{self.options.get(name, name)}: expected {_describe(_list_item(annotation) or annotation)}{value}"


def _is_option(token: str) -> bool:
    return token.startswith("-") and not re.fullmatch(r"-\d+(\.\d*)?([eE][-+]?\d+)?", token)


def run_tool(command: str, argv: Sequence[str]) -> int:
    """Parse ``argv`` for tool ``command`` and run it; bad settings or input exit 2 with one line."""
    tool = TOOLS[command]
    try:
        if tool.fit_settings:  # LightningCLI's parser: its own --help, errors as SettingsError (a ValueError)
            code = getattr(importlib.import_module(tool.module), tool.function)(list(argv))
            return 0 if code is None else int(code)
        parser = ToolParser(command, getattr(importlib.import_module(tool.module), tool.function))
        if any(arg in ("-h", "--help") for arg in argv):
            parser.parser.print_help()
            return 0
        return parser.call(parser.parse(argv))
    except INPUT_ERRORS as err:
        return error(command, err)


def error(command: str | None, err: BaseException, code: int = 2) -> int:
    """``ttt <command>: error: <first line of the message>`` on stderr; returns the exit ``code``
    (2: bad settings or input; 1: the run failed, e.g. diverged)."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    print(f"ttt {command}: error: {line}" if command else f"ttt: error: {line}", file=sys.stderr)
    return code


class _NoTips(logging.Filter):
    """Drops Lightning's advertising tips (e.g. for its hosted logger) from its info log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("\N{ELECTRIC LIGHT BULB} Tip")


def quiet_third_party() -> None:
    """Keep third-party deprecation notices and Lightning's tips out of ``ttt`` output.

    Deprecation warnings are ignored unless they are attributed to this package's code (then they
    concern us); every other warning, the project's own included, still shows.
    """
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(?!lightning_ttt\b)")
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoTips) for f in logger.filters):
        logger.addFilter(_NoTips())


def main(argv: list[str] | None = None) -> int:
    quiet_third_party()
    from_command_line = argv is None
    argv = sys.argv[1:] if from_command_line else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in (*LIGHTNING, *TOOLS):
        return error(None, ValueError(f"unknown command {argv[0]!r}; expected one of {', '.join((*LIGHTNING, *TOOLS))}"))
    note = use_default_threads()
    if argv[0] in TOOLS:
        return run_tool(argv[0], argv[1:])
    from lightning_ttt.lit.cli import SettingsError, cli_main
    from lightning_ttt.lit.guard import NonFiniteError
    from lightning_ttt.lit.messages import holding_messages

    with holding_messages() as held:  # Lightning's start-up notes print once the run starts, not before an error
        if note and not any(a.startswith("--trainer.threads") for a in argv):  # say why
            held.note(f"ttt {argv[0]}: {note}")
        try:
            cli_main(None if from_command_line else argv)
        except SettingsError as err:  # before training starts; other errors while it runs keep their traceback
            held.discard()
            return error(argv[0], err)
        except NonFiniteError as err:  # the run diverged: one line naming the step and the quantity
            held.show()
            return error(argv[0], err, code=1)
    return 0
