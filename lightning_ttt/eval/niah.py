"""Single-needle "needle in a haystack" evaluation following RULER's S-NIAH protocol (paper §2.7).

Tasks (templates are this project's own wording):

* ``niah_1`` — a 7-digit number hidden in repeated noise sentences;
* ``niah_2`` — a 7-digit number hidden in essay text (default: the embedded stdlib corpus);
* ``niah_3`` — a UUID hidden in essay text.

A prompt is ``[BOS] header haystack[:d] needle haystack[d:] question`` built directly in token
ids, so its length equals the requested context length exactly. Every sample records whether the
needle lies inside the last ``window`` tokens of the prompt (always inside for full attention):
fixed-state models recall a needle roughly only when it does.
"""

from __future__ import annotations

import csv
import json
import random
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Literal, Sequence

TASKS = ("niah_1", "niah_2", "niah_3")
# Kept short so that byte-level debug models can be probed at a few hundred tokens.
HEADER = "Remember the magic {kind} hidden in this text.\n"
NEEDLE = " One of the special magic {kind}s for {key} is: {value}. "
QUESTION = "\nThe special magic {kind} for {key} is:"
NOISE = "The meadow is quiet. The river runs slowly. The clouds drift on and on. Back to the start of the day. "
_ADJ = ("amber", "brisk", "calm", "dusty", "eager", "faint", "gentle", "hollow", "icy", "jolly", "keen", "lucky",
        "misty", "noble", "odd", "proud", "quick", "rusty", "silent", "tidy", "vivid", "wild", "young", "zesty")
_NOUN = ("anchor", "badger", "candle", "dolphin", "engine", "falcon", "garden", "harbor", "island", "jacket",
         "kettle", "lantern", "meadow", "needle", "orchard", "pebble", "quartz", "rocket", "saddle", "tunnel",
         "violin", "walnut", "yacht", "zeppelin")


@dataclass
class Sample:
    task: str
    length: int  # prompt tokens, BOS included
    depth: float  # requested needle depth, fraction of the haystack
    index: int  # sample number within (task, length, depth)
    key: str
    value: str
    needle_start: int  # token position of the needle's first token in the prompt
    needle_end: int  # one past its last token
    inside: bool  # the whole needle lies in the last ``window`` tokens (or no window)
    prompt: list[int]


def inside_window(needle_start: int, length: int, window: int | None) -> bool:
    """True when a needle starting at ``needle_start`` lies in the last ``window`` of ``length`` tokens."""
    return window is None or needle_start >= length - window


def load_haystack(tokenizer, corpus: Sequence[str] = ("stdlib",), min_tokens: int = 4096) -> list[int]:
    """Token ids of the corpus's documents, joined by blank lines, until ``min_tokens`` are gathered."""
    from lightning_ttt.data.corpus import STDLIB, expand_source, stdlib_files

    paths: list[Path] = []
    for source in corpus:
        paths.extend(path for _, path in stdlib_files()) if source == STDLIB else paths.extend(expand_source(source))
    ids: list[int] = []
    sep = tokenizer.encode("\n\n").tolist()
    for path in paths:
        text = Path(path).read_text("utf-8", errors="replace").strip()
        if text:
            ids.extend(tokenizer.encode(text, where=str(path)).tolist() + sep)
        if len(ids) >= min_tokens:
            return ids
    if len(ids) < 16:
        raise ValueError(f"haystack corpus {list(corpus)} holds too little text ({len(ids)} tokens)")
    while len(ids) < min_tokens:  # a small corpus repeats
        ids = ids + ids
    return ids


def _value(task: str, rng: random.Random) -> tuple[str, str]:
    if task == "niah_3":
        return "uuid", str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return "number", str(rng.randint(1_000_000, 9_999_999))


def make_sample(task: str, length: int, depth: float, index: int, seed: int, tokenizer,
                essay: list[int] | None, window: int | None) -> Sample:
    """One prompt of exactly ``length`` tokens; deterministic in (seed, task, length, depth, index)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth {depth} must lie in [0, 1]")
    rng = random.Random(f"niah:{seed}:{task}:{length}:{depth}:{index}")
    kind, value = _value(task, rng)
    key = f"{rng.choice(_ADJ)}-{rng.choice(_NOUN)}"
    enc = lambda text: tokenizer.encode(text).tolist()  # noqa: E731
    head = [tokenizer.bos_id] + enc(HEADER.format(kind=kind))
    needle = enc(NEEDLE.format(kind=kind, key=key, value=value))
    tail = enc(QUESTION.format(kind=kind, key=key))
    n_hay = length - len(head) - len(needle) - len(tail)
    if n_hay < 1:
        raise ValueError(f"length {length} is too short for task {task}: the template alone takes "
                         f"{length - n_hay} tokens")
    if task == "niah_1":
        unit = enc(NOISE)
        hay = (unit * (n_hay // len(unit) + 1))[:n_hay]
    else:
        if essay is None or len(essay) < 1:
            raise ValueError(f"task {task} needs an essay haystack")
        source = essay if len(essay) > n_hay else essay * (n_hay // len(essay) + 1)
        start = rng.randrange(len(source) - n_hay + 1)
        hay = source[start:start + n_hay]
    cut = round(depth * n_hay)
    prompt = head + hay[:cut] + needle + hay[cut:] + tail
    assert len(prompt) == length
    start = len(head) + cut
    return Sample(task, length, depth, index, key, value, start, start + len(needle),
                  inside_window(start, length, window), prompt)


def make_samples(tasks: Iterable[str], lengths: Iterable[int], depths: Iterable[float], samples: int, seed: int,
                 tokenizer, window: int | None, corpus: Sequence[str] = ("stdlib",)) -> list[Sample]:
    tasks, lengths, depths = list(tasks), list(lengths), list(depths)
    essay = None
    if any(t != "niah_1" for t in tasks):
        essay = load_haystack(tokenizer, corpus, min_tokens=2 * max(lengths))
    return [make_sample(t, n, d, i, seed, tokenizer, essay, window)
            for t in tasks for n in lengths for d in depths for i in range(samples)]


def score(samples: Sequence[Sample], answer_fn: Callable[[Sample], str], progress: bool = False) -> list[dict]:
    """Exact match: a sample is correct when its needle value occurs in ``answer_fn(sample)``."""
    from tqdm.auto import tqdm

    rows = []
    for sample in tqdm(samples, desc="ttt niah", unit="sample", disable=not progress, dynamic_ncols=True):
        answer = answer_fn(sample)
        row = {k: v for k, v in asdict(sample).items() if k != "prompt"}
        rows.append({**row, "answer": answer, "correct": sample.value in answer})
    return rows


def model_answerer(model, update, tokenizer, max_new_tokens: int | None = None) -> Callable[[Sample], str]:
    """Greedy generation through the inference API (TTT steps while reading, for e2e)."""
    import torch

    from lightning_ttt.infer import Generator, SamplingConfig

    generator = Generator(model, update)
    greedy = SamplingConfig(greedy=True, stop_ids=(model.cfg.eos_id,))
    device = next(model.parameters()).device

    def answer(sample: Sample) -> str:
        budget = max_new_tokens or len(tokenizer.encode(" " + sample.value)) + 8
        prompt = torch.tensor([sample.prompt], dtype=torch.long, device=device)
        out = generator.generate(prompt, budget, greedy)
        return tokenizer.decode(out.tokens[0].tolist())

    return answer


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Accuracy per (task, length, depth), plus depth "all" per (task, length); split inside/outside."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["task"], row["length"], row["depth"])].append(row)
        groups[(row["task"], row["length"], "all")].append(row)
    out = []
    for (task, length, depth), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], str(kv[0][2]))):
        record = {"task": task, "length": length, "depth": depth}
        for split, members in (("all", group), ("inside", [r for r in group if r["inside"]]),
                               ("outside", [r for r in group if not r["inside"]])):
            record[f"n_{split}"] = len(members)
            record[f"acc_{split}"] = (sum(r["correct"] for r in members) / len(members)) if members else ""
        out.append(record)
    return out


def heatmap(summary: Sequence[dict], task: str):
    """Accuracy heatmap, depth (rows) × length (columns), for one task; returns a matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cells = [r for r in summary if r["task"] == task and r["depth"] != "all"]
    lengths = sorted({r["length"] for r in cells})
    depths = sorted({r["depth"] for r in cells})
    grid = np.full((len(depths), len(lengths)), np.nan)
    for r in cells:
        grid[depths.index(r["depth"]), lengths.index(r["length"])] = r["acc_all"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.0 + 0.5 * len(depths)))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(f"{task} accuracy")
    for i in range(len(depths)):
        for j in range(len(lengths)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def write_results(rows: Sequence[dict], out: str | Path, tensorboard: str | None = None) -> list[dict]:
    """samples.jsonl, summary.csv and one heatmap_<task>.png per task under ``out``; TensorBoard figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "samples.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    summary = summarize(rows)
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    writer = None
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(tensorboard)
    for task in sorted({r["task"] for r in rows}):
        fig = heatmap(summary, task)
        fig.savefig(out / f"heatmap_{task}.png", dpi=100)
        if writer is not None:
            writer.add_figure(f"niah/{task}", fig, close=False)
        plt.close(fig)
    if writer is not None:
        for r in summary:
            if r["depth"] == "all":
                for split in ("all", "inside", "outside"):
                    if r[f"n_{split}"]:
                        writer.add_scalar(f"niah/{r['task']}/acc_{split}", r[f"acc_{split}"], r["length"])
        writer.close()
    return summary


def format_table(summary: Sequence[dict]) -> str:
    """Accuracy by task and length (all depths), inside vs outside the window, as a markdown table."""
    lines = ["| task | length | acc (n) | inside (n) | outside (n) |", "|---|---|---|---|---|"]
    fmt = lambda r, s: f"{r[f'acc_{s}']:.2f} ({r[f'n_{s}']})" if r[f"n_{s}"] else "– (0)"  # noqa: E731
    for r in summary:
        if r["depth"] == "all":
            lines.append(f"| {r['task']} | {r['length']} | {fmt(r, 'all')} | {fmt(r, 'inside')} | {fmt(r, 'outside')} |")
    return "\n".join(lines)


def niah(*, ckpt: str | None = None, model_dir: str | None = None, lengths: Sequence[int] = (256, 512, 1024),
         depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
         tasks: Sequence[Literal["niah_1", "niah_2", "niah_3"]] = TASKS, samples: int = 4, seed: int = 0,
         corpus: Sequence[str] = ("stdlib",), window: int | None = None, max_new_tokens: int | None = None,
         out: str = "niah", tensorboard: str | None = None, device: str = "cpu", threads: int | None = None,
         progress: bool = True) -> int:
    """RULER single-needle retrieval (S-NIAH), split inside/outside the attention window.

    Args:
        ckpt: Lightning checkpoint (.ckpt).
        model_dir: directory written by `ttt export` (instead of --ckpt).
        lengths: prompt lengths in tokens.
        depths: needle depths, fractions of the haystack.
        tasks: RULER tasks.
        samples: samples per (task, length, depth).
        seed: seeds the needles and haystacks.
        corpus: essay haystack sources: stdlib, files, directories or globs.
        window: window for the inside/outside split (default: the model's; none for fa).
        max_new_tokens: default: the value's length + 8.
        out: output directory.
        tensorboard: TensorBoard log directory for the heatmaps.
        device: torch device.
        threads: CPU threads.
        progress: show a progress bar (--no-progress: do not).
    """
    import torch

    from lightning_ttt.data.tokenizer import load_tokenizer
    from lightning_ttt.infer.loading import load_any

    if threads:
        torch.set_num_threads(threads)
    if samples < 1:
        raise ValueError(f"--samples={samples} must be >= 1")
    loaded = load_any(ckpt, model_dir)
    model = loaded.model.to(device)
    cfg = model.cfg
    window = window if window is not None else cfg.attention_window
    tokenizer = load_tokenizer(loaded.tokenizer)
    items = make_samples(tasks, lengths, depths, samples, seed, tokenizer, window, corpus)
    with torch.no_grad():
        rows = score(items, model_answerer(model, loaded.update, tokenizer, max_new_tokens), progress)
    summary = write_results(rows, out, tensorboard)
    print(f"{cfg.name} (method {cfg.method}, window {window if window is not None else 'none'})")
    print(format_table(summary))
    print(f"wrote {len(rows)} samples to {Path(out) / 'samples.jsonl'}, summary.csv and heatmaps")
    return 0
