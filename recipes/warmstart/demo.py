"""The CPU warm-start demonstration: a small "pretrained" Llama model turned into TTT-E2E.

    python recipes/warmstart/demo.py --out runs/warmstart-demo          # about half an hour on 2 cores
    python recipes/warmstart/demo.py --out /tmp/demo --tiny             # the CI-sized run (a minute or two)

Every step is an ordinary `ttt` command (logged to OUT/logs/<step>.log), run in order:

1. `ttt fit` recipes/warmstart/tiny-pretrain.yaml: the "original" model, full attention, trained on
   256-byte windows (Llama architecture: GQA, half-split RoPE, pre-norm only, no QK-norm);
2. its weights written as a Hugging Face LlamaForCausalLM directory (``convert.hf.to_hf``), which
   needs the ``.[hf]`` extra (transformers);
3. `ttt convert-hf` of that directory to fa (the original), swa and e2e;
4. `ttt fit` recipes/warmstart/tiny-e2e.yaml: TTT-E2E meta-training of the e2e conversion at 512
   tokens, and, as a control with the same data and steps, recipes/warmstart/tiny-swa.yaml:
   ordinary fine-tuning of the swa conversion;
5. `ttt eval-context` of all five at EVAL_LENGTH on held-out stdlib files, and `ttt niah` of the
   original, the swa conversion and the meta-trained model;
6. OUT/report.md (loss by position, a table) and OUT/nll_by_position.png.

A step whose output exists is skipped, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STDLIB = HERE.parent / "data" / "stdlib.yaml"
WINDOW, MINI_BATCH = 64, 32

# name -> (steps, overrides) of each size; the full size is what the README reports.
SIZES = {
    "full": dict(pretrain=["--trainer.max_steps=400"], meta=["--trainer.max_steps=150"],
                 eval_tokens=65536, eval_lengths=[512, 1024],
                 niah=["--lengths", "768", "1024", "--tasks", "niah_1", "--samples", "20", "--answer-tokens", "16"]),
    "tiny": dict(pretrain=["--trainer.max_steps=6", "--data.batch_size=4", "--trainer.val_check_interval=6",
                           "--data.max_val_windows=4", "--trainer.limit_val_batches=1"],
                 meta=["--trainer.max_steps=2", "--data.batch_size=2", "--trainer.val_check_interval=2",
                       "--data.max_val_windows=2", "--trainer.limit_val_batches=1"],
                 eval_tokens=1024, eval_lengths=[512],
                 niah=["--lengths", "768", "--tasks", "niah_1", "--samples", "2", "--answer-tokens", "12"]),
}
MODELS = ("original (fa)", "swa conversion", "e2e conversion, before meta-training", "swa, fine-tuned",
          "e2e, meta-trained")


def run(step: str, args: list[str], out: Path) -> None:
    """``ttt ARGS`` in a subprocess, its output in OUT/logs/STEP.log; stop the demonstration if it fails."""
    log = out / "logs" / f"{step}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"[{step}] ttt {' '.join(args)}", flush=True)
    with log.open("w") as f:
        code = subprocess.call([sys.executable, "-m", "lightning_ttt", *args], stdout=f, stderr=subprocess.STDOUT)
    if code != 0:
        tail = log.read_text().strip().splitlines()[-5:]
        sys.exit(f"[{step}] failed with exit code {code}; see {log}:\n" + "\n".join(tail))
    print(f"[{step}] done in {time.perf_counter() - started:.0f} s", flush=True)


def last_checkpoint(runs: Path, name: str) -> Path | None:
    found = sorted((runs / name).glob("version_*/checkpoints/last.ckpt"))
    return found[-1] if found else None


def fit(step: str, recipe: str, out: Path, extra: list[str]) -> Path:
    runs = out / "runs"
    ckpt = last_checkpoint(runs, step)
    if ckpt is None:
        run(step, ["fit", "--config", str(HERE / recipe), f"--trainer.logger.init_args.save_dir={runs}",
                   f"--trainer.logger.init_args.name={step}", "--trainer.enable_progress_bar=false", *extra], out)
        ckpt = last_checkpoint(runs, step)
    return ckpt


def save_as_hugging_face(ckpt: Path, target: Path) -> None:
    """The pretrained checkpoint as a LlamaForCausalLM directory, checked against our own logits."""
    if (target / "config.json").is_file():
        return
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lightning_ttt.convert.hf import to_hf
    from lightning_ttt.infer.loading import load_checkpoint

    model = load_checkpoint(ckpt).model
    config, state = to_hf(model)
    hf = LlamaForCausalLM(LlamaConfig(**config)).eval()
    hf.load_state_dict(state, strict=False)  # a tied head has no lm_head tensor of its own
    ids = torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model.logits(model(ids)), hf(ids).logits
    assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max(), "the Hugging Face copy computes something else"
    hf.save_pretrained(target)


def evaluate(step: str, source: list[str], out: Path, size: dict) -> dict:
    target = out / "eval" / step
    if not (target / "context_eval.json").is_file():
        run(f"eval-{step}", ["eval-context", *source, "--lengths", *map(str, size["eval_lengths"]),
                             "--tokens-per-length", str(size["eval_tokens"]), "--batch-tokens", "4096",
                             "--data-config", str(STDLIB), "--out", str(target)], out)
    return json.loads((target / "context_eval.json").read_text())


def niah(step: str, source: list[str], out: Path, size: dict) -> None:
    target = out / "niah" / step
    if not (target / "summary.json").is_file():
        run(f"niah-{step}", ["niah", *source, *size["niah"], "--no-progress", "--out", str(target)], out)


def report(out: Path, length: int) -> str:
    """Loss by position at ``length`` for every model: a markdown table and a figure."""
    from lightning_ttt.metrics import PositionCurve, bucket_means, plot_nll_by_position
    from lightning_ttt.io import atomic_write_text, save_figure
    import torch

    buckets = [(0, WINDOW), (WINDOW, 256), (256, 512), (512, 1024)]
    buckets = [(lo, min(hi, length)) for lo, hi in buckets if lo < length]
    curves, lines = {}, []
    header = "| model | " + " | ".join(f"{lo}–{hi}" for lo, hi in buckets) + " | all |"
    lines += [header, "|---" * (len(buckets) + 2) + "|"]
    for step, label in zip(("fa", "swa", "e2e", "swa-finetuned", "e2e-metatrained"), MODELS):
        data = json.loads((out / "eval" / step / f"nll_by_position-{length:06d}.json").read_text())
        curve = PositionCurve(torch.tensor(data["nll"]), torch.tensor(data["tokens"], dtype=torch.float64))
        curves[label] = curve
        cells = [row["nll"] for row in bucket_means(curve, buckets)] + [bucket_means(curve, [(0, length)])[0]["nll"]]
        lines.append(f"| {label} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    table = "\n".join(lines) + "\n" + "\n" + niah_table(out)
    atomic_write_text(out / "report.md", f"Loss (nats per byte) by token position at context {length}:\n\n{table}")
    fig = plot_nll_by_position(curves, title=f"warm start: NLL by position at {length} tokens", mini_batch=MINI_BATCH,
                               window=WINDOW, bins=48)
    fig.axes[0].axvline(256, color="black", linestyle="-.", linewidth=1, label="original's training length")
    fig.axes[0].legend(fontsize="x-small")
    save_figure(fig, out / "nll_by_position.png")
    return table


def niah_table(out: Path) -> str:
    """NIAH (niah_1) accuracy per prompt length, with the share of needles that lay inside the window."""
    rows = {}
    for step, label in (("fa", MODELS[0]), ("swa", MODELS[1]), ("e2e-metatrained", MODELS[4])):
        for record in json.loads((out / "niah" / step / "summary.json").read_text())["random"]:
            rows.setdefault(label, {})[record["length"]] = record
    lengths = sorted({length for records in rows.values() for length in records})
    lines = ["| NIAH accuracy (niah_1) | " + " | ".join(f"{n} tokens" for n in lengths) + " |",
             "|---" * (len(lengths) + 1) + "|"]
    for label, records in rows.items():
        cells = [f"{records[n]['accuracy']:.2f} ({records[n]['n']} samples)" for n in lengths]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/warmstart-demo", help="output directory (reused when it exists)")
    parser.add_argument("--tiny", action="store_true", help="a few steps of everything (what CI runs)")
    args = parser.parse_args(argv)
    out, size = Path(args.out), SIZES["tiny" if args.tiny else "full"]
    started = time.perf_counter()
    original = fit("original-fa", "tiny-pretrain.yaml", out, size["pretrain"])
    save_as_hugging_face(original, out / "hf-original")
    models = out / "models"
    for method, options in (("fa", []), ("swa", ["--window", str(WINDOW)]),
                            ("e2e", ["--window", str(WINDOW), "--suffix-len", "1"])):
        if not (models / method / "config.json").is_file():
            run(f"convert-{method}", ["convert-hf", str(out / "hf-original"), "--out", str(models / method),
                                      "--method", method, "--mini-batch", str(MINI_BATCH), "--tokenizer", "bytes", *options], out)
    trained = {}
    for method in ("swa", "e2e"):
        step = {"swa": "swa-finetuned", "e2e": "e2e-metatrained"}[method]
        directory = str(models / method)
        trained[step] = fit(step, f"tiny-{method}.yaml", out,
                            [f"--model.preset={directory}", f"--model.init_from={directory}", *size["meta"]])
    for step in ("fa", "swa", "e2e"):
        evaluate(step, ["--model-dir", str(models / step)], out, size)
    for step, ckpt in trained.items():
        evaluate(step, [str(ckpt)], out, size)
    for step, source in (("fa", ["--model-dir", str(models / "fa")]), ("swa", ["--model-dir", str(models / "swa")]),
                         ("e2e-metatrained", ["--ckpt", str(trained["e2e-metatrained"])])):
        niah(step, source, out, size)
    table = report(out, max(size["eval_lengths"]))
    print(table)
    print(f"warm-start demonstration finished in {time.perf_counter() - started:.0f} s; see {out / 'report.md'} "
          f"and {out / 'nll_by_position.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
