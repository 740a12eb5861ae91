"""S-NIAH samples: the three single-needle tasks and their prompts, built in token ids within a budget.

A prompt is ``[BOS] head + haystack[:i] + needle + haystack[i:] + tail`` where ``head``/``tail``
come from the templates (the tail ends with the answer prefix) and ``i`` is a unit boundary of
the haystack (a sentence boundary for essays). Its length plus the answer budget fits the
requested length: the haystack has as many units as fit (found once per task and length by a
search on the token count, then trimmed per sample when a longer key or value needs room).

Depth: ``random`` samples draw the insertion point per sample from a seeded generator as RULER
does — uniformly over the noise blocks, and from 40 evenly spaced depths for essays; ``grid``
samples put it at fixed depth fractions (for heatmaps). Sample ``k`` of a (task, length, depth)
is the same for a given seed however many samples are drawn.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from lightning_ttt.eval.niah.haystack import ESSAY, NOISE, Haystack
from lightning_ttt.eval.niah.templates import Templates

RANDOM, GRID = "random", "grid"
# RULER's essay depths: 40 evenly spaced percentages of the haystack, rounded to whole percent.
ESSAY_DEPTHS = tuple(int(d) / 100 for d in np.round(np.linspace(0, 100, num=40)).astype(int))
INSIDE, STRADDLING, OUTSIDE = "inside", "straddling", "outside"


@dataclass(frozen=True)
class Task:
    name: str
    haystack: str  # NOISE or ESSAY
    value_type: str  # "numbers" or "uuids" (keys are always adjective-noun words)

    @property
    def kinds(self) -> tuple[str, str]:
        """(singular, plural) names of the value type, as the templates' {type} and {types}."""
        return self.value_type[:-1], self.value_type


TASKS = {t.name: t for t in (Task("niah_1", NOISE, "numbers"), Task("niah_2", ESSAY, "numbers"),
                             Task("niah_3", ESSAY, "uuids"))}


@dataclass
class Sample:
    task: str
    length: int  # the requested length: prompt + answer budget <= length
    placement: str  # RANDOM or GRID
    requested_depth: float | None  # the grid depth (None for RANDOM)
    depth: float  # where the needle sits: units before it / units in the haystack
    index: int  # sample number within (task, length, placement, requested depth)
    key: str
    values: list[str]  # every value the answer must contain (one for single-needle tasks)
    units: int  # haystack units (sentences or noise blocks) in the prompt
    prompt_tokens: int
    needle_start: int  # token position of the needle's first token in the prompt
    needle_end: int  # one past its last token
    region: str  # INSIDE / STRADDLING / OUTSIDE the last ``window`` tokens of the prompt
    prompt: np.ndarray = field(repr=False, compare=False)  # int64 ids, BOS first

    def record(self) -> dict:
        """The sample without its prompt, for result files."""
        return {k: v for k, v in vars(self).items() if k != "prompt"}


def region(needle_start: int, needle_end: int, prompt_tokens: int, window: int | None) -> str:
    """Where the needle lies relative to the last ``window`` tokens of the prompt (no window: inside).

    The last prompt token, which predicts the answer's first token, sees positions
    ``prompt_tokens - window .. prompt_tokens - 1``.
    """
    if window is None or needle_start >= prompt_tokens - window:
        return INSIDE
    return OUTSIDE if needle_end <= prompt_tokens - window else STRADDLING


@lru_cache(maxsize=1)
def _words() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """RULER's key vocabulary: the adjective and noun lists of the ``wonderwords`` package."""
    from wonderwords import RandomWord

    words = RandomWord(enhanced_prefixes=False)
    return (tuple(sorted(words.filter(include_categories=["adjective"]))),
            tuple(sorted(words.filter(include_categories=["noun"]))))


def draw_key(rng: random.Random) -> str:
    adjectives, nouns = _words()
    return f"{rng.choice(adjectives)}-{rng.choice(nouns)}"


def draw_value(value_type: str, rng: random.Random) -> str:
    if value_type == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return str(rng.randint(1_000_000, 9_999_999))  # 7 digits


class PromptBuilder:
    """Builds the prompts of one task at one length from a haystack, templates and a tokenizer."""

    def __init__(self, task: Task, length: int, haystack: Haystack, templates: Templates, tokenizer,
                 answer_tokens: int, window: int | None) -> None:
        if haystack.kind != task.haystack:
            raise ValueError(f"task {task.name} needs a {task.haystack} haystack, got {haystack.kind}")
        self.task, self.length, self.haystack, self.templates = task, length, haystack, templates
        self.tokenizer, self.answer_tokens, self.window = tokenizer, answer_tokens, window
        self._span = lru_cache(maxsize=64)(self._encode_span)  # essays: 40 random depths share their spans
        adjectives, nouns = _words()  # fit with the longest key, so samples rarely need trimming
        self.units = self.fit_units(f"{max(adjectives, key=len)}-{max(nouns, key=len)}",
                                    draw_value(task.value_type, random.Random(0)))

    def _encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text), dtype=np.int32)

    def _encode_span(self, start: int, stop: int, lead: bool) -> np.ndarray:
        """Haystack units ``start .. stop-1``, after a separator when ``lead``."""
        if start >= stop:
            return np.zeros(0, dtype=np.int32)
        return self._encode((self.haystack.separator if lead else "") + self.haystack.join(start, stop))

    def build(self, key: str, value: str, units: int, at: int) -> tuple[np.ndarray, int, int]:
        """(prompt ids, needle start, needle end) with the needle after haystack unit ``at - 1``.

        The pieces (head, units before, separator + needle, separator + units after, tail) are
        tokenized apart, at spaces and line breaks, and joined.
        """
        kind, kinds = self.task.kinds
        head, tail = self.templates.head_and_tail(kind, kinds, key)
        needle = self.templates.needle.format(type=kind, types=kinds, key=key, value=value)
        before = np.concatenate([self._encode(head), self._span(0, at, False)])
        middle = self._encode((self.haystack.separator if at > 0 else "") + needle)
        after = np.concatenate([self._span(at, units, True), self._encode(tail)])
        prompt = np.concatenate([[self.tokenizer.bos_id], before, middle, after]).astype(np.int64)
        lead = 0  # a separator that got tokens of its own is not part of the needle
        while lead < len(middle) - 1 and not self.tokenizer.decode(middle[:lead + 1]).strip():
            lead += 1
        start = 1 + len(before)
        return prompt, start + lead, start + len(middle)

    def _over(self, key: str, value: str, units: int) -> int:
        """Tokens over the budget (<= 0 when the prompt plus the answer budget fits)."""
        prompt, _, _ = self.build(key, value, units, units)
        return len(prompt) + self.answer_tokens - self.length

    def fit_units(self, key: str, value: str) -> int:
        """The most haystack units whose prompt plus answer budget fits the length: a search on token
        counts that starts from an estimate (units of the first 64 joined) and gallops to bracket it."""
        over = self._over(key, value, 1)
        if over > 0:
            raise ValueError(f"length {self.length} is too short for task {self.task.name}: the templates, one "
                             f"haystack unit, the needle and the {self.answer_tokens}-token answer budget take "
                             f"{over + self.length} tokens")
        per_unit = max(1.0, len(self._encode(self.haystack.join(0, 64))) / 64)
        guess = max(1, int(1 - over / per_unit))
        step = max(1, guess // 64)
        if self._over(key, value, guess) <= 0:  # low fits, high does not
            low, high = guess, guess + step
            while self._over(key, value, high) <= 0:
                low, high, step = high, high + 2 * step, 2 * step
        else:
            low, high = max(1, guess - step), guess
            while self._over(key, value, low) > 0:
                low, high, step = max(1, low - 2 * step), low, 2 * step
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if self._over(key, value, middle) <= 0 else (low, middle)
        return low

    def sample(self, placement: str, depth: float | None, index: int, seed: int) -> Sample:
        """Sample ``index``; ``depth`` is the fraction for GRID placement (None for RANDOM)."""
        rng = random.Random(f"niah:{seed}:{self.task.name}:{self.length}:{placement}:{depth}:{index}")
        key = draw_key(rng)
        value = draw_value(self.task.value_type, rng)
        requested = depth
        if placement == RANDOM:  # RULER: a uniform noise block, or one of 40 depths in an essay
            depth = rng.random() if self.haystack.kind == NOISE else rng.choice(ESSAY_DEPTHS)
        units = self.units
        while True:
            at = int(units * depth)  # RULER's rule; a random noise depth is < 1, so never after the last block
            prompt, start, end = self.build(key, value, units, at)
            over = len(prompt) + self.answer_tokens - self.length
            if over <= 0:
                break
            if units == 1:
                raise ValueError(f"length {self.length} is too short for task {self.task.name} with key {key!r}")
            per_unit = max(1.0, (len(prompt) - 64) / units)
            units = max(1, units - math.ceil(over / per_unit))
        return Sample(self.task.name, self.length, placement, requested, at / units, index, key, [value], units,
                      len(prompt), start, end, region(start, end, len(prompt), self.window), prompt)


def sample_plan(tasks: Sequence[str], lengths: Sequence[int], samples: int, depths: Sequence[float] = (),
                depth_samples: int = 0) -> list[tuple[str, int, str, float | None, int]]:
    """(task, length, placement, depth, index) of every sample, in evaluation order."""
    plan = []
    for task in tasks:
        for length in lengths:
            plan += [(task, length, RANDOM, None, i) for i in range(samples)]
            plan += [(task, length, GRID, d, i) for d in depths for i in range(depth_samples)]
    return plan


def check_request(tasks: Sequence[str], lengths: Sequence[int], samples: int, depths: Sequence[float],
                  depth_samples: int, answer_tokens: int) -> None:
    """One-line errors for settings no prompt can be built from."""
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"--tasks: unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if not lengths or any(n < 1 for n in lengths):
        raise ValueError(f"--lengths={list(lengths)}: expected one or more positive token counts")
    if samples < 0 or depth_samples < 0 or samples + (depth_samples if depths else 0) == 0:
        raise ValueError(f"--samples={samples}, --depth-samples={depth_samples}: expected at least one sample")
    for depth in depths:
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"--depths: {depth} is not a fraction of the haystack in [0, 1]")
    if answer_tokens < 1:
        raise ValueError(f"--answer-tokens={answer_tokens} must be >= 1")


def builders(tasks: Sequence[str], lengths: Sequence[int], tokenizer, haystacks: dict[str, Haystack],
             templates: Templates, window: int | None, answer_tokens: int) -> dict[tuple[str, int], PromptBuilder]:
    """A prompt builder per (task, length), each with its haystack size fitted (so a length too short
    for a task is an error before any sample runs)."""
    out = {}
    for task in tasks:
        kind = TASKS[task].haystack
        if kind not in haystacks:
            raise ValueError(f"task {task} needs an {kind} haystack")
        for length in lengths:
            out[(task, length)] = PromptBuilder(TASKS[task], length, haystacks[kind], templates, tokenizer,
                                                answer_tokens, window)
    return out


def iter_samples(tasks: Sequence[str], lengths: Sequence[int], samples: int, seed: int, tokenizer,
                 haystacks: dict[str, Haystack], templates: Templates, window: int | None,
                 answer_tokens: int = 128, depths: Sequence[float] = (), depth_samples: int = 0) -> Iterator[Sample]:
    """The samples of ``sample_plan`` one at a time (a long prompt is built only when it is needed);
    every (task, length) is checked when the iterator is created."""
    check_request(tasks, lengths, samples, depths, depth_samples, answer_tokens)
    built = builders(tasks, lengths, tokenizer, haystacks, templates, window, answer_tokens)
    return (built[(task, length)].sample(placement, depth, index, seed)
            for task, length, placement, depth, index in sample_plan(tasks, lengths, samples, depths, depth_samples))
