"""The sweep file: a grid of methods x context lengths x other settings, read and checked in one place.

A sweep file has a top-level ``sweep:`` section (see ``recipes/debug/sweep-context.yaml``)::

    sweep:
      name: context                 # TensorBoard experiment name; out_dir defaults to runs/<name>
      methods: [fa, swa, e2e]
      grid: {model.config.mini_batch: [64, 128]}   # optional extra axes, crossed with methods
      base: {trainer: ..., model: ..., data: ...}  # the LightningCLI config every run starts from
      pretrain: {seq_len: 1024, set: {trainer.max_steps: 200}, share: {swa: fa}}
      extend: {lengths: [2048, 4096], tokens_per_batch: 32768, set: {model.lr: 4.0e-4}}   # + 1024, see below
      evaluate: {tokens_per_length: 262144, batch_tokens: 16384, last_tokens: 512}
      where:                        # settings for the points that match
        - {method: fa, length: 2048, set: {model.config.rope_theta: 20000.0}}

``set`` maps dotted LightningCLI keys to values. Every problem is one line naming the key.

The ``extend`` stage fine-tunes at the base length (``pretrain.seq_len``) as well as at every
``extend.lengths`` entry, with the same ``set``, so every evaluated point has had the same training:
one pretraining plus one fine-tune of ``trainer.max_steps`` x ``tokens_per_batch`` tokens.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_ttt.config import METHODS
from lightning_ttt.io import yaml_problem

_SECTIONS = {"name", "out_dir", "methods", "grid", "base", "pretrain", "extend", "evaluate", "where"}
_PRETRAIN = {"seq_len", "set", "share"}
_EXTEND = {"lengths", "tokens_per_batch", "set"}
_EVALUATE = {"tokens_per_length", "batch_tokens", "last_tokens", "min_doc_tokens", "accelerator", "precision"}
_MATCH = {"method", "stage", "length"}


@dataclass
class SweepSpec:
    name: str
    out_dir: Path
    methods: list[str]
    grid: dict[str, list[Any]]
    base: dict[str, Any]
    pretrain_len: int
    pretrain_set: dict[str, Any]
    share: dict[str, str]  # method -> the method whose runs it reuses where the two are the same model
    lengths: list[int]
    tokens_per_batch: int | None
    extend_set: dict[str, Any]
    evaluate: dict[str, Any] = field(default_factory=dict)
    where: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finetune_lengths(self) -> list[int]:
        """Lengths of the ``extend`` stage: the base length first (fine-tuned too), then ``extend.lengths``."""
        return [self.pretrain_len, *(n for n in self.lengths if n != self.pretrain_len)]

    def combos(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(name, method, grid values) for every method x grid point, e.g. ``("e2e-mini_batch=64", "e2e", {...})``."""
        keys = list(self.grid)
        out = []
        for method in self.methods:
            for values in itertools.product(*(self.grid[k] for k in keys)):
                point = dict(zip(keys, values))
                name = method + "".join(f"-{k.rsplit('.', 1)[-1]}={v}" for k, v in point.items())
                out.append((name, method, point))
        return out

    def settings(self, method: str, stage: str, length: int, point: dict[str, Any]) -> dict[str, Any]:
        """The nested LightningCLI config of one run: base < stage ``set`` < grid values < matching ``where``."""
        config = copy.deepcopy(self.base)
        for dotted in (self.pretrain_set if stage == "pretrain" else self.extend_set, point):
            deep_merge(config, nest(dotted))
        facts = {"method": method, "stage": stage, "length": length, **point}
        for rule in self.where:
            if all(_matches(facts[key], want) for key, want in rule.items() if key != "set"):
                deep_merge(config, nest(rule["set"]))
        return config


def _matches(value: Any, want: Any) -> bool:
    return value in want if isinstance(want, list) else value == want


def nest(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1, "c": {"d": 2}}`` -> ``{"a": {"b": 1}, "c": {"d": 2}}``."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = copy.deepcopy(value)
    return out


def deep_merge(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Merge ``other`` into ``into`` (nested dicts merge, everything else replaces)."""
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
    return into


def get_dotted(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def load_spec(path: str | Path, out_dir: str | Path | None = None) -> SweepSpec:
    """Read and check a sweep file; ``out_dir`` replaces the file's ``out_dir``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} does not exist")
    text = path.read_text()
    problem = yaml_problem(text)
    if problem is not None:
        raise ValueError(f"{path}: not valid YAML ({problem})")
    raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict) or not isinstance(raw.get("sweep"), dict):
        raise ValueError(f"{path}: expected a top-level `sweep:` section")
    s = raw["sweep"]
    where = f"{path}: sweep"
    _unknown(s, _SECTIONS, where)
    name = str(s.get("name") or path.stem)
    methods = _list(s.get("methods"), f"{where}.methods")
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"{where}.methods: {method!r} is not one of {', '.join(METHODS)}")
    grid = s.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ValueError(f"{where}.grid: expected a mapping of dotted keys to non-empty lists of values")
    if "model.method" in grid or "data.seq_len" in grid:
        raise ValueError(f"{where}.grid: methods and context lengths are set by sweep.methods and "
                         "sweep.pretrain/extend, not by grid keys")
    base = s.get("base") or {}
    if not isinstance(base, dict):
        raise ValueError(f"{where}.base: expected a LightningCLI config mapping (trainer/model/data)")
    pretrain, extend = _section(s, "pretrain", _PRETRAIN, where), _section(s, "extend", _EXTEND, where)
    evaluate = _section(s, "evaluate", _EVALUATE, where)
    pretrain_len = _positive(pretrain.get("seq_len"), f"{where}.pretrain.seq_len")
    lengths = [_positive(x, f"{where}.extend.lengths") for x in _list(extend.get("lengths", []), f"{where}.extend.lengths",
                                                                       allow_empty=True)]
    tokens_per_batch = extend.get("tokens_per_batch")
    if tokens_per_batch is not None:
        _positive(tokens_per_batch, f"{where}.extend.tokens_per_batch")
        for length in [pretrain_len, *lengths]:
            if tokens_per_batch < length:
                raise ValueError(f"{where}.extend.tokens_per_batch={tokens_per_batch} is less than one sequence of "
                                 f"{length} tokens")
    share = pretrain.get("share") or {}
    for method, owner in share.items():
        if method not in methods or owner not in methods or {method, owner} != {"fa", "swa"}:
            raise ValueError(f"{where}.pretrain.share: {method}: {owner} — only fa and swa may share runs (the same "
                             "model within the window), and both must be in sweep.methods")
        if share.get(owner):
            raise ValueError(f"{where}.pretrain.share: {owner} both shares and is shared")
    rules = s.get("where") or []
    for i, rule in enumerate(rules if isinstance(rules, list) else [None]):
        if not isinstance(rule, dict) or not isinstance(rule.get("set"), dict):
            raise ValueError(f"{where}.where[{i}]: expected a mapping with match keys and a `set:` mapping")
        _unknown({k: v for k, v in rule.items() if k != "set"}, _MATCH | set(grid), f"{where}.where[{i}]")
    return SweepSpec(name=name, out_dir=Path(out_dir or s.get("out_dir") or f"runs/{name}"), methods=methods,
                     grid=grid, base=base, pretrain_len=pretrain_len, pretrain_set=dict(pretrain.get("set") or {}),
                     share=dict(share), lengths=lengths, tokens_per_batch=tokens_per_batch,
                     extend_set=dict(extend.get("set") or {}), evaluate=evaluate, where=rules)


def _unknown(section: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(section) - allowed)
    if extra:
        raise ValueError(f"{where}: unknown key {extra[0]!r}; expected one of {', '.join(sorted(allowed))}")


def _section(s: dict, key: str, allowed: set[str], where: str) -> dict:
    section = s.get(key) or {}
    if not isinstance(section, dict):
        raise ValueError(f"{where}.{key}: expected a mapping")
    _unknown(section, allowed, f"{where}.{key}")
    return section


def _list(value: Any, where: str, allow_empty: bool = False) -> list:
    if not isinstance(value, list) or (not value and not allow_empty):
        raise ValueError(f"{where}: expected a {'' if allow_empty else 'non-empty '}list")
    return value


def _positive(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{where}: expected a positive integer, got {value!r}")
    return value
