"""Scoring: an answerer turns prompt ids into generated text; RULER's string_match_all grades it.

An ``Answerer`` is any callable ``prompt ids -> generated text``. The default reads the prompt
with a trained model and generates greedily (``model_answerer``); ``window_oracle`` is a
reference answerer that reads the needle back from the last ``window`` tokens of the prompt
only, i.e. the score of a model that recalls perfectly what its window shows and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from lightning_ttt.eval.niah.prompts import Sample
from lightning_ttt.eval.niah.templates import Templates

Answerer = Callable[[np.ndarray], str]
_CONTROL = re.compile(r"[\x00-\x1f]")


def clean_prediction(text: str) -> str:
    """RULER's post-processing: strip, control characters to newlines, strip again."""
    return _CONTROL.sub("\n", text.strip()).strip()


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """The share of ``references`` found in ``prediction``, case-insensitively (RULER's metric per sample)."""
    prediction = clean_prediction(prediction).lower()
    return sum(ref.lower() in prediction for ref in references) / len(references)


def score(samples: Iterable[Sample], answerer: Answerer, total: int | None = None,
          progress: bool = False) -> list[dict]:
    """One row per sample: its record, the answer and its score (1.0 when every value was recalled)."""
    from tqdm.auto import tqdm

    rows = []
    for sample in tqdm(samples, total=total, desc="ttt niah", unit="sample", disable=not progress,
                       dynamic_ncols=True):
        answer = answerer(sample.prompt)
        rows.append({**sample.record(), "answer": answer, "score": string_match_all(answer, sample.values)})
    return rows


def model_answerer(model, update, tokenizer, answer_tokens: int = 128) -> Answerer:
    """Greedy generation of up to ``answer_tokens`` tokens, stopping at EOS (TTT steps while reading, for e2e)."""
    import torch

    from lightning_ttt.infer import Generator, SamplingConfig

    generator = Generator(model, update)
    greedy = SamplingConfig(greedy=True, stop_ids=(model.cfg.eos_id,))
    device = next(model.parameters()).device

    def answer(prompt: np.ndarray) -> str:
        ids = torch.as_tensor(prompt, dtype=torch.long, device=device)[None]  # [1, T]
        with torch.no_grad():
            out = generator.generate(ids, answer_tokens, greedy)
        return tokenizer.decode(out.tokens[0].tolist())

    return answer


def window_oracle(tokenizer, templates: Templates, window: int | None) -> Answerer:
    """Answers with the needle's value when the whole needle lies in the last ``window`` prompt tokens
    (anywhere when ``window`` is None), else with nothing; it reads only the token ids it is given."""
    question = templates.question_pattern()

    def answer(prompt: np.ndarray) -> str:
        seen = tokenizer.decode(prompt if window is None else prompt[-window:])
        asked = question.search(seen)
        if asked is None:  # the window does not even hold the question
            return ""
        found = templates.needle_pattern(asked["key"]).search(seen)
        return "" if found is None else " " + found["value"]

    return answer
