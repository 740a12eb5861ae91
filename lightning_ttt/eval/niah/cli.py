"""``ttt niah``: the typed command around ``run_niah`` (options come from the signature and docstring)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from lightning_ttt.eval.niah.prompts import TASKS
from lightning_ttt.eval.niah.report import format_table
from lightning_ttt.eval.niah.run import DEFAULT_SAMPLES, run_niah

Task = Literal["niah_1", "niah_2", "niah_3"]


def niah(*, ckpt: str | None = None, model_dir: str | None = None, lengths: Sequence[int],
         tasks: Sequence[Task] = tuple(TASKS), samples: int = DEFAULT_SAMPLES, depths: Sequence[float] = (),
         depth_samples: int = 20, seed: int = 0, haystack: Sequence[str] | None = None, text_field: str = "text",
         templates: str | None = None, window: int | None = None, answer_tokens: int = 128, out: str = "niah",
         tensorboard: str | None = None, device: str = "cpu", threads: int | None = None,
         progress: bool = True, tokenizer: str | None = None, overwrite: bool = False) -> int:
    """RULER single-needle retrieval (S-NIAH-1/2/3): accuracy per task and length with 95% intervals.

    Each sample is also placed inside, straddling or outside the attention window; the report sets
    accuracy against the window share (window / length), what a model that sees only its window scores.

    Args:
        ckpt: Lightning checkpoint (.ckpt).
        model_dir: directory written by `ttt export` (instead of --ckpt).
        lengths: context lengths in tokens; each prompt plus the answer budget fits its length.
        tasks: RULER tasks to run.
        samples: random-depth samples per (task, length); 500 as RULER.
        depths: also run a depth grid at these fractions of the haystack (reported separately, as heatmaps),
            e.g. 0 0.25 0.5 0.75 1.
        depth_samples: samples per depth-grid cell.
        seed: seeds needles, depths and haystack offsets.
        haystack: essay prose for niah_2/niah_3: text files, directories, globs or hf:<dataset>.
        text_field: text field of .jsonl/.parquet/hub haystack records.
        templates: YAML mapping overriding some of the prompt templates.
        window: window for the inside/straddling/outside split (default: the model's; none for fa).
        answer_tokens: answer budget, tokens generated per sample (128 as RULER).
        out: output directory; must be empty or absent unless --overwrite.
        tensorboard: TensorBoard log directory for scalars and figures.
        device: torch device.
        threads: CPU threads (default: the cores not already busy).
        progress: show a progress bar (--no-progress: do not).
        tokenizer: tokenizer.json or hub name replacing the one the model records.
        overwrite: replace a non-empty --out (whole, once the report is written).
    """
    result = run_niah(ckpt=ckpt, model_dir=model_dir, lengths=lengths, tasks=tasks, samples=samples, depths=depths,
                      depth_samples=depth_samples, seed=seed, haystack=haystack, text_field=text_field,
                      templates=templates, window=window, answer_tokens=answer_tokens, out=out,
                      tensorboard=tensorboard, device=device, threads=threads, progress=progress,
                      tokenizer=tokenizer, overwrite=overwrite)
    about = result.about
    shown = about["window"] if about["window"] is not None else "none"
    print(f"{about['model']} (method {about['method']}, window {shown}); "
          f"accuracy with 95% Wilson intervals; window share = window / length")
    print(format_table(result.summary))
    print(f"wrote {len(result.rows)} samples and the report to {Path(out)}/")
    return 0
