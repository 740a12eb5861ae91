"""``ttt eval-context``: one checkpoint evaluated at several context lengths in one process.

For every length the checkpoint's model is rebuilt with ``seq_len = length`` and validated with
Lightning (TTT active for e2e) on held-out windows of that length from the checkpoint's own data
settings (a seeded selection spread over the held-out documents; the table says how many documents
each length reads); the results are a table (length -> mean loss, loss over the last positions), one
per-position report per length and a figure.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import Any, Callable, Literal

from lightning_ttt.config import ModelConfig, read_export_meta
from lightning_ttt.data.datamodule import LongContextDataModule
from lightning_ttt.infer.loading import check_model_dir, config_from_hparams, read_checkpoint
from lightning_ttt.io import atomic_write_json, atomic_write_text, check_out_dir, replacing_dir, save_figure
from lightning_ttt.lit.module import TTTLanguageModel, load_weights, module_from_checkpoint
from lightning_ttt.lit.trainer import TTTTrainer
from lightning_ttt.metrics import PositionCurve, plot_nll_by_position, tail_mean, write_position_report

RESULT = "context_eval.json"
SWAPPABLE_METHODS = ("fa", "swa")  # same weights, different attention span


def data_settings(ckpt: dict, data_config: str | None) -> dict[str, Any]:
    """The checkpoint's DataModule settings, replaced by the ``data:`` section of ``data_config`` if given."""
    settings = {k: v for k, v in (ckpt.get("datamodule_hyper_parameters") or {}).items() if not k.startswith("_")}
    if data_config is not None:
        import yaml

        path = Path(data_config)
        if not path.is_file():
            raise FileNotFoundError(f"--data-config {path} does not exist")
        section = (yaml.safe_load(path.read_text()) or {}).get("data")
        if not isinstance(section, dict):
            raise ValueError(f"--data-config {path} has no `data:` section (expected a recipe like recipes/data/stdlib.yaml)")
        settings.update(section.get("init_args", section))
    if not settings:
        raise ValueError("the checkpoint holds no data settings (datamodule_hyper_parameters); pass --data-config "
                         "with a `data:` section")
    return settings


def evaluate_length(build: Callable[[int], TTTLanguageModel], data: dict[str, Any], length: int, *,
                    windows: int | None, batch_tokens: int, last_tokens: int, trainer_kwargs: dict[str, Any],
                    report_stem: Path) -> dict[str, Any]:
    """Validate the model ``build(length)`` returns at one context length; write its per-position report;
    return the table row."""
    module = build(length)
    datamodule = LongContextDataModule(**{**data, "seq_len": length, "batch_size": max(1, batch_tokens // length),
                                          "max_val_windows": windows, "num_workers": 0})
    if datamodule.vocab_size > module.cfg.vocab_size or datamodule.bos_id != module.cfg.bos_id:
        raise ValueError(f"data.tokenizer={datamodule.tokenizer.name!r} ({datamodule.vocab_size} ids, BOS "
                         f"{datamodule.bos_id}) does not fit the model (vocab_size {module.cfg.vocab_size}, BOS "
                         f"{module.cfg.bos_id}); give the model's tokenizer in --data-config")
    trainer = TTTTrainer(logger=False, enable_checkpointing=False, enable_model_summary=False, **trainer_kwargs)
    started = time.perf_counter()
    trainer.validate(module, datamodule=datamodule, verbose=False)
    result = module.last_eval
    curve: PositionCurve = result["curve"]
    write_position_report(result["report"], report_stem)
    return {"seq_len": length, "loss": result["loss"], "nll": result["nll"], "ppl": result["ppl"],
            "last_loss": tail_mean(curve, last_tokens), "last_tokens": min(last_tokens, length),
            "windows": len(datamodule.validation[0]), "documents": datamodule.validation_coverage["documents"],
            "tokens": int(curve.tokens.sum()),
            "seconds": round(time.perf_counter() - started, 2), "curve": curve}


def _checkpoint_source(ckpt_path: str | Path, method: str | None, data_config: str | None):
    """(model per length, data settings, result header) of a Lightning checkpoint."""
    ckpt, hp = read_checkpoint(ckpt_path)
    if method is not None and method != hp["method"]:
        if {method, hp["method"]} - set(SWAPPABLE_METHODS):
            raise ValueError(f"--method {method}: the checkpoint is method {hp['method']}; only "
                             f"{' and '.join(SWAPPABLE_METHODS)} weights are interchangeable")
        hp = {**hp, "method": method}
    cfg = config_from_hparams(hp, str(ckpt_path))
    header = {"checkpoint": str(ckpt_path), "method": hp["method"], "preset": hp["preset"],
              "trained_seq_len": hp.get("seq_len"), "window": cfg.attention_window, "mini_batch": cfg.mini_batch}

    def build(length: int) -> TTTLanguageModel:
        return module_from_checkpoint(ckpt, {**hp, "seq_len": length, "init_from": None}, str(ckpt_path))

    return build, data_settings(ckpt, data_config), header


def _model_dir_source(model_dir: str | Path, method: str | None, data_config: str | None):
    """(model per length, data settings, result header) of an exported model directory; the data settings
    come from ``data_config``, its tokenizer by default from the directory."""
    meta, cfg = read_export_meta(model_dir), ModelConfig.from_exported(model_dir)
    if method is not None and method != cfg.method and {method, cfg.method} - set(SWAPPABLE_METHODS):
        raise ValueError(f"--method {method}: {model_dir} is method {cfg.method}; only "
                         f"{' and '.join(SWAPPABLE_METHODS)} weights are interchangeable")
    method = method or cfg.method
    if data_config is None:
        raise ValueError("--model-dir needs --data-config: a YAML with a `data:` section (sources, tokenizer)")
    data = data_settings({}, data_config)
    data.setdefault("tokenizer", meta.get("tokenizer"))
    if not data["tokenizer"]:
        raise ValueError(f"{model_dir} records no tokenizer; set data.tokenizer in --data-config")

    def build(length: int) -> TTTLanguageModel:
        module = TTTLanguageModel(preset=str(model_dir), method=method, seq_len=length)
        load_weights(module, str(model_dir))
        return module.eval()

    header = {"checkpoint": str(model_dir), "method": method, "preset": None, "trained_seq_len": None,
              "window": cfg.replace(method=method).attention_window, "mini_batch": cfg.mini_batch}
    return build, data, header


def evaluate_context(ckpt_path: str | Path | None, lengths: list[int], out_dir: str | Path, *,
                     method: str | None = None, tokens_per_length: int | None = 262_144, batch_tokens: int = 16_384,
                     last_tokens: int = 512, data_config: str | None = None,
                     data_overrides: dict[str, Any] | None = None, trainer_kwargs: dict[str, Any] | None = None,
                     model_dir: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Evaluate a checkpoint (``ckpt_path``) or an exported model directory (``model_dir``) at every
    length; write ``context_eval.{json,csv,png}`` and per-length reports into ``out_dir``, which must be
    empty unless ``overwrite`` (then it is replaced whole when the evaluation finishes)."""
    if (ckpt_path is None) == (model_dir is None):
        raise ValueError("give exactly one of a checkpoint (CKPT) or an exported model directory (--model-dir)")
    _check_lengths(lengths, tokens_per_length, batch_tokens, last_tokens)
    check_out_dir(out_dir, overwrite)
    if ckpt_path is not None:
        build, data, header = _checkpoint_source(ckpt_path, method, data_config)
    else:
        build, data, header = _model_dir_source(model_dir, method, data_config)
    data = {**data, **(data_overrides or {})}
    with replacing_dir(out_dir, overwrite) as out:
        return _evaluate_lengths(build, data, header, lengths, out, tokens_per_length=tokens_per_length,
                                 batch_tokens=batch_tokens, last_tokens=last_tokens, trainer_kwargs=trainer_kwargs)


def _evaluate_lengths(build: Callable[[int], TTTLanguageModel], data: dict[str, Any], header: dict[str, Any],
                      lengths: list[int], out: Path, *, tokens_per_length: int | None, batch_tokens: int,
                      last_tokens: int, trainer_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """Every length in turn, then the table and figure, all written under ``out``."""
    rows, curves = [], {}
    for length in lengths:
        windows = None if tokens_per_length is None else max(1, tokens_per_length // length)
        print(f"eval-context: {Path(header['checkpoint']).name} ({header['method']}) at {length} tokens, "
              f"{'all' if windows is None else f'up to {windows}'} validation windows", file=sys.stderr)
        row = evaluate_length(build, data, length, windows=windows, batch_tokens=batch_tokens,
                              last_tokens=last_tokens, trainer_kwargs=trainer_kwargs or {},
                              report_stem=out / f"nll_by_position-{length:06d}")
        curves[f"T={length}"] = row.pop("curve")
        rows.append(row)
    result = {**header, "rows": rows}
    _write_outputs(result, curves, out)
    return result


def _check_lengths(lengths: list[int], tokens_per_length: int | None, batch_tokens: int, last_tokens: int) -> None:
    if not lengths or any(length < 2 for length in lengths):
        raise ValueError(f"--lengths {lengths}: give one or more context lengths >= 2")
    for name, value in (("--tokens-per-length", tokens_per_length), ("--batch-tokens", batch_tokens),
                        ("--last-tokens", last_tokens)):
        if value is not None and value < 1:
            raise ValueError(f"{name}={value} must be >= 1")


def _write_outputs(result: dict[str, Any], curves: dict[str, PositionCurve], out: Path) -> None:
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(result["rows"][0]))
    writer.writeheader()
    writer.writerows(result["rows"])
    atomic_write_text(out / "context_eval.csv", table.getvalue())
    save_figure(context_figure(result, curves), out / "context_eval.png")
    atomic_write_json(out / RESULT, result)  # last: its presence means the evaluation finished


def context_figure(result: dict[str, Any], curves: dict[str, PositionCurve]):
    """Left: loss and last-positions loss against context length. Right: NLL by position per length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    lengths = [row["seq_len"] for row in rows]
    left.plot(lengths, [row["loss"] for row in rows], marker="o", label="mean loss")
    left.plot(lengths, [row["last_loss"] for row in rows], marker="s", label=f"last {rows[0]['last_tokens']} tokens")
    left.set_xscale("log", base=2)
    left.set_xlabel("context length (tokens)")
    left.set_ylabel("loss (nats/token)")
    left.set_title(f"{result['method']}: loss vs context length")
    left.grid(alpha=0.3)
    left.legend(fontsize="small")
    mini_batch = result["mini_batch"] if result["method"] == "e2e" else None
    plot_nll_by_position(curves, title="NLL by token position", mini_batch=mini_batch, ax=right)
    fig.tight_layout()
    return fig


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| length | loss | last-tokens loss | ppl | windows | documents |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['seq_len']} | {r['loss']:.4f} | {r['last_loss']:.4f} | {r['ppl']:.3f} | {r['windows']} | "
              f"{r['documents']} |" for r in rows]
    return "\n".join(lines)


def eval_context(ckpt: str | None = None, /, *, lengths: list[int], out: str,
                 method: Literal["fa", "swa"] | None = None, tokens_per_length: int = 262_144,
                 batch_tokens: int = 16_384, last_tokens: int = 512, data_config: str | None = None,
                 min_doc_tokens: int | None = None, accelerator: str = "auto", precision: str = "32-true",
                 progress: bool = True, model_dir: str | None = None, threads: int | None = None,
                 overwrite: bool = False) -> int:
    """Evaluate one checkpoint or model directory at several context lengths (TTT active for e2e): table,
    per-position reports, figure.

    Args:
        ckpt: Lightning checkpoint (.ckpt) of a TTTLanguageModel.
        lengths: context lengths in tokens.
        out: output directory; must be empty or absent unless --overwrite.
        method: evaluate fa weights with the sliding window (swa), or the reverse.
        tokens_per_length: validation tokens per length: windows = this // length (0: all).
        batch_tokens: tokens per batch: batch = this // length.
        last_tokens: the "last positions" of the table.
        data_config: YAML with a `data:` section replacing the checkpoint's data settings.
        min_doc_tokens: only documents this long (e.g. the longest length, so every length reads the same texts).
        accelerator: Lightning accelerator.
        precision: Lightning precision.
        progress: show Lightning's progress bar (--no-progress: do not).
        model_dir: an exported model directory (ttt export, ttt import-jax) instead of CKPT; needs
            --data-config (its tokenizer defaults to the directory's).
        threads: CPU threads (default: the cores not already busy).
        overwrite: replace a non-empty --out (whole, once the evaluation finishes).
    """
    if model_dir is not None:
        check_model_dir(model_dir)  # a damaged directory: one line now, not after the data is read
    overrides = {} if min_doc_tokens is None else {"min_doc_tokens": min_doc_tokens}
    trainer_kwargs = {"accelerator": accelerator, "devices": 1, "precision": precision,
                      "enable_progress_bar": progress, "threads": threads}
    result = evaluate_context(ckpt, lengths, out, method=method, tokens_per_length=tokens_per_length or None,
                              batch_tokens=batch_tokens, last_tokens=last_tokens, data_config=data_config,
                              data_overrides=overrides, trainer_kwargs=trainer_kwargs, model_dir=model_dir,
                              overwrite=overwrite)
    print(markdown_table(result["rows"]))
    print(f"wrote {Path(out) / RESULT}, context_eval.csv, context_eval.png and nll_by_position-*.{{json,csv}}")
    return 0
