"""Every string of an S-NIAH prompt, in one place; the defaults reproduce RULER's single-needle wording.

The prompt is ``task`` with ``{context}`` replaced by the haystack (with the needle inserted),
followed by ``answer_prefix``; the model continues from there. Placeholders: ``{type}`` (the
value's kind, singular: ``number``, ``uuid``), ``{types}`` (plural), ``{key}``, ``{value}`` and
``{context}``. Users override any subset with a YAML mapping (``ttt niah --templates FILE``).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, fields, replace
from pathlib import Path

import yaml

# Which placeholders each template may use, and which it must use.
_ALLOWED = {"task": {"type", "types", "key", "context"}, "answer_prefix": {"type", "types", "key"},
            "needle": {"type", "types", "key", "value"}, "noise": set()}
_REQUIRED = {"task": {"context"}, "needle": {"key", "value"}}


@dataclass(frozen=True)
class Templates:
    """The wording of the benchmark (defaults: RULER's, as a single-needle task renders them)."""

    task: str = ("A special magic {type} is hidden within the following text. Make sure to memorize it. "
                 "I will quiz you about the {type} afterwards.\n{context}\n"
                 "What is the special magic {type} for {key} mentioned in the provided text?")
    answer_prefix: str = " The special magic {type} for {key} mentioned in the provided text is"
    needle: str = "One of the special magic {types} for {key} is: {value}."
    noise: str = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

    def __post_init__(self) -> None:
        for name in _ALLOWED:
            text = getattr(self, name)
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"template {name!r} must be a non-empty string")
            used = placeholders(text) if _ALLOWED[name] else set()
            unknown = sorted(used - _ALLOWED[name])
            if unknown:
                raise ValueError(f"template {name!r} uses {{{unknown[0]}}}; allowed: "
                                 f"{', '.join('{' + p + '}' for p in sorted(_ALLOWED[name])) or 'none'}")
            missing = sorted(_REQUIRED.get(name, set()) - used)
            if missing:
                raise ValueError(f"template {name!r} must contain {{{missing[0]}}}")
        if self.task.count("{context}") != 1:
            raise ValueError("template 'task' must contain {context} exactly once")

    @classmethod
    def load(cls, path: str | Path | None) -> Templates:
        """The defaults, with the fields of a YAML mapping at ``path`` (if given) replacing theirs."""
        if path is None:
            return cls()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--templates: {path} does not exist")
        data = yaml.safe_load(path.read_text("utf-8"))
        names = [f.name for f in fields(cls)]
        if not isinstance(data, dict) or not set(data) <= set(names):
            raise ValueError(f"--templates {path}: expected a mapping with some of the keys {', '.join(names)}")
        return replace(cls(), **data)

    def head_and_tail(self, kind: str, kinds: str, key: str) -> tuple[str, str]:
        """The prompt text before and after the haystack (the tail ends with the answer prefix)."""
        head, tail = self.task.split("{context}")
        values = {"type": kind, "types": kinds, "key": key}
        return head.format(**values), tail.format(**values) + self.answer_prefix.format(**values)

    def needle_pattern(self, key: str) -> re.Pattern:
        """A regex matching the needle for ``key`` in decoded text; group ``value`` is the hidden value."""
        return _pattern(self.needle, {"key": re.escape(key), "value": r"(?P<value>\S+?)", "type": r"\S+",
                                      "types": r"\S+"})

    def question_pattern(self) -> re.Pattern:
        """A regex matching the end of a prompt (question and answer prefix); group ``key`` is the query."""
        tail = self.task.split("{context}")[1] + self.answer_prefix
        return _pattern(tail, {"key": r"(?P<key>.+?)", "type": r"\S+", "types": r"\S+"}, at_end=True)


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def _pattern(template: str, groups: dict[str, str], at_end: bool = False) -> re.Pattern:
    """Literal text escaped, each placeholder replaced by its regex (a repeated named group must match
    the same text again); ``at_end`` anchors the match at the end of the text."""
    parts, seen = [], set()
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name is not None:
            regex = groups[name]
            if name in seen and "(?P<" in regex:
                regex = f"(?P={name})"
            seen.add(name)
            parts.append(regex)
    return re.compile("".join(parts) + (r"\Z" if at_end else ""), re.DOTALL)
