"""Running the benchmark: haystacks, samples, an answerer, the summary — as typed functions the CLI calls."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

from lightning_ttt.eval.niah.haystack import ESSAY, ESSAY_EXAMPLE, NOISE, Haystack, essay_haystack, noise_haystack, \
    splitter_name
from lightning_ttt.eval.niah.prompts import TASKS, check_request, iter_samples, sample_plan
from lightning_ttt.eval.niah.report import summarize, write_report
from lightning_ttt.eval.niah.scoring import Answerer, model_answerer, score
from lightning_ttt.eval.niah.templates import Templates
from lightning_ttt.io import check_out_dir, replacing_dir
from lightning_ttt.threads import count_is_fixed, following_the_load

DEFAULT_SAMPLES = 500  # per (task, length), as RULER: 95% interval half-width <= 0.044


def load_haystacks(tasks: Sequence[str], sources: Sequence[str] | None, templates: Templates,
                   text_field: str = "text", min_chars: int = 1 << 20) -> dict[str, Haystack]:
    """The haystacks the tasks need; essay tasks without ``sources`` are an error (no prose ships)."""
    haystacks = {NOISE: noise_haystack(templates.noise)}
    essay_tasks = [t for t in tasks if TASKS[t].haystack == ESSAY]
    if essay_tasks:
        if not sources:
            raise ValueError(f"{', '.join(essay_tasks)} hide the needle in essays: give --haystack with prose (text "
                             f"files, a directory, or hf:<dataset>, e.g. {ESSAY_EXAMPLE}), or run --tasks niah_1")
        haystacks[ESSAY] = essay_haystack(sources, text_field, min_chars)
    return haystacks


@dataclass
class Result:
    rows: list[dict]  # one per sample
    summary: dict[str, list[dict]]  # "random" and "grid" records
    about: dict = field(default_factory=dict)  # settings of the run (model, window, haystack, templates, ...)


def evaluate(answerer: Answerer, tokenizer, window: int | None, tasks: Sequence[str], lengths: Sequence[int],
             haystacks: dict[str, Haystack], templates: Templates = Templates(), samples: int = DEFAULT_SAMPLES,
             seed: int = 0, answer_tokens: int = 128, depths: Sequence[float] = (), depth_samples: int = 0,
             progress: bool = False) -> Result:
    """Score ``answerer`` on every sample; ``window`` decides each needle's region and the window share."""
    check_request(tasks, lengths, samples, depths, depth_samples, answer_tokens)
    total = len(sample_plan(tasks, lengths, samples, depths, depth_samples))
    stream = iter_samples(tasks, lengths, samples, seed, tokenizer, haystacks, templates, window, answer_tokens,
                          depths, depth_samples)
    rows = score(stream, answerer, total=total, progress=progress)
    about = {"window": window, "tasks": list(tasks), "lengths": list(lengths), "samples": samples, "seed": seed,
             "answer_tokens": answer_tokens, "depths": list(depths), "depth_samples": depth_samples,
             "haystack": haystacks[ESSAY].source if ESSAY in haystacks else None,
             "sentence_splitter": splitter_name() if ESSAY in haystacks else None,
             "tokenizer": getattr(tokenizer, "name", type(tokenizer).__name__), "templates": asdict(templates)}
    return Result(rows, summarize(rows, window), about)


def run_niah(*, ckpt: str | None = None, model_dir: str | None = None, lengths: Sequence[int],
             tasks: Sequence[str] = tuple(TASKS), samples: int = DEFAULT_SAMPLES, depths: Sequence[float] = (),
             depth_samples: int = 20, seed: int = 0, haystack: Sequence[str] | None = None, text_field: str = "text",
             templates: str | None = None, window: int | None = None, answer_tokens: int = 128, out: str = "niah",
             tensorboard: str | None = None, device: str = "cpu", threads: int | None = None,
             progress: bool = True, tokenizer: str | None = None, overwrite: bool = False) -> Result:
    """Evaluate a checkpoint (or exported directory) and write the report under ``out``, which must be
    empty unless ``overwrite`` (then it is replaced whole once the report is written).

    ``window`` defaults to the model's (none for full attention); ``tokenizer`` replaces the one the
    model records. Bad settings raise ValueError or FileNotFoundError before the model runs.
    """
    import torch

    from lightning_ttt.infer.loading import fitting_tokenizer, load_any

    text = Templates.load(templates)
    check_request(tasks, lengths, samples, depths, depth_samples, answer_tokens)
    check_out_dir(out, overwrite)
    haystacks = load_haystacks(tasks, haystack, text, text_field, min_chars=max(1 << 20, 8 * max(lengths)))
    if threads:
        torch.set_num_threads(threads)
    loaded = load_any(ckpt, model_dir)
    model = loaded.model.to(device)
    cfg = model.cfg
    if window is None:
        window = cfg.attention_window
    codec = fitting_tokenizer(loaded.tokenizer_spec(tokenizer), cfg)
    answer = model_answerer(model, loaded.update, codec, answer_tokens)
    with (nullcontext(answer) if device != "cpu" or count_is_fixed(threads)  # else: threads follow the load
          else following_the_load(answer, _say)) as answer:
        result = evaluate(answer, codec, window, tasks, lengths, haystacks, text, samples, seed, answer_tokens,
                          depths, depth_samples if depths else 0, progress)
    result.about = {"model": cfg.name, "method": cfg.method, "checkpoint": ckpt or model_dir, **result.about}
    with replacing_dir(out, overwrite) as tmp:
        write_report(result.rows, result.summary, tmp, result.about, tensorboard)
    return result


def _say(note: str) -> None:
    """A line above the progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(f"ttt niah: {note} (--threads N fixes the count)", file=sys.stderr)
