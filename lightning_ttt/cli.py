"""The ``ttt`` command: Lightning subcommands plus the project's tools."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

USAGE = """usage: ttt <command> [options]

training and evaluation (LightningCLI; `ttt fit --help` for all options):
  fit | validate | test | predict   --config recipes/debug/e2e.yaml [--config more.yaml] [--key value ...]

tools:
  verify-reference FIXTURE.npz      compare with numbers from the authors' JAX implementation
  prepare SOURCE... --out DIR       tokenize sources once into token shards (`ttt prepare --help`)
  export CKPT --out DIR             write safetensors weights + config.json (loads without pickle)
  generate (--ckpt CKPT | --model-dir DIR) [--prompt-file F]   stream generated text (`ttt generate --help`)
  plan --config RECIPE [--config ...]   parameters, FLOPs/token and memory per device of a recipe
  bench [--lengths 1024 4096 ...]   inference prefill/decode speed and memory vs context (`ttt bench --help`)
  niah (--ckpt CKPT | --model-dir DIR) [--lengths ...]   RULER needle retrieval, inside/outside the window (`ttt niah --help`)
  eval-context CKPT --lengths 1024 4096 ... --out DIR     loss by context length and by position (`ttt eval-context --help`)
  sweep SWEEP.yaml [--dry-run]      pretrain, extend, evaluate a methods x lengths grid (`ttt sweep --help`)
"""


def verify_reference(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ttt verify-reference",
                                     description="Check the model against a reference fixture (NAME.npz + NAME.json).")
    parser.add_argument("fixture", help="path to the fixture's .npz file (its .json must sit beside it)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--against", choices=["auto", "f32", "f64"], default="auto",
                        help="reference arrays: f64.* for float64, the float32 ones otherwise (auto)")
    parser.add_argument("--modes", nargs="*", default=None, help="subset of the fixture's modes")
    parser.add_argument("--verbose", action="store_true", help="include every check in the report")
    args = parser.parse_args(argv)
    from lightning_ttt.tools.verify import verify

    try:
        report = verify(args.fixture, args.dtype, args.against, args.modes)
    except (FileNotFoundError, ValueError) as err:
        print(f"ttt verify-reference: error: {err}", file=sys.stderr)
        return 2
    if not args.verbose:
        for mode in report["modes"].values():
            mode["checks"] = {k: v for k, v in mode["checks"].items() if not v["passed"]}
    print(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


def _lazy(module: str, function: str = "main"):
    """A tool entry point imported only when its command runs (keeps `ttt --help` fast)."""

    def run(argv: list[str]) -> int:
        return getattr(importlib.import_module(module), function)(argv)

    return run


TOOLS = {
    "verify-reference": verify_reference,
    "prepare": _lazy("lightning_ttt.data.prepare"),
    "export": _lazy("lightning_ttt.infer.cli", "export_main"),
    "generate": _lazy("lightning_ttt.infer.cli", "generate_main"),
    "bench": _lazy("lightning_ttt.infer.bench"),
    "niah": _lazy("lightning_ttt.eval.niah"),
    "plan": _lazy("lightning_ttt.tools.plan"),
    "eval-context": _lazy("lightning_ttt.eval.context"),
    "sweep": _lazy("lightning_ttt.sweep.run"),
}


def main(argv: list[str] | None = None) -> int:
    from_command_line = argv is None
    argv = sys.argv[1:] if from_command_line else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in TOOLS:
        return TOOLS[argv[0]](argv[1:])
    from lightning_ttt.lit.cli import cli_main

    cli_main(None if from_command_line else argv)
    return 0
