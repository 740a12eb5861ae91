"""Write the paper's recipes from the tables below: ``python recipes/paper/generate.py``.

Numbers: Tandon et al., "End-to-End Test-Time Training for Long Context" (App. B, Table 3) and
the authors' released configs. Two stages per model size:

* ``pretrain-{size}-{method}[-3x].yaml`` — 8K pretraining of fa and e2e. swa is full attention
  while the sequence fits its window (8K <= 8K), so it has no run of its own at 8K: it extends
  from fa's pretrained weights, as in the paper, and its 8K fine-tune is fa's.
* ``ext-{size}-{method}-{L}K[-3x].yaml`` — fine-tuning at 8K (fa, e2e), 16K, 32K, 64K and 128K
  from the pretrained checkpoint: twice the pretraining batch in tokens, 5% of its tokens, lr
  4e-4 with the cosine schedule restarted; RoPE theta raised for fa only.

``-3x`` is the headline 2.7B ("3b") budget: three times the tokens in both stages. Every run saves
to ``runs/<name>/checkpoints/`` (last.ckpt included), so an extension's ``model.init_from``
names its pretraining run's ``last.ckpt`` without a version number. Data are cut from one
continuous token stream (``packing: concat``), as the authors' pipeline does; pretraining keeps
documents of at least 8K tokens (the paper's filter). Edit the tables here, never the YAML files.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from lightning_ttt.config import LLAMA3_TOKENIZER

HERE = Path(__file__).resolve().parent
DEVICES = 8          # GPUs per node; the global batch is DEVICES x num_nodes x micro-batch x accumulation
PRETRAIN_LEN = 8192
# size -> (pretraining sequences of 8K per step, pretraining steps, peak lr)
SIZES: dict[str, tuple[int, int, float]] = {
    "125m": (64, 4800, 3e-3), "350m": (64, 13500, 1.5e-3), "760m": (64, 29000, 1.25e-3),
    "1b": (64, 50000, 1e-3), "3b": (128, 52000, 8e-4),
}
BUDGETS: dict[str, tuple[int, ...]] = {"3b": (1, 3)}  # token multipliers per size (default: 1x only)
METHODS = ("fa", "swa", "e2e")
WINDOW = 8192        # the presets' sliding window (swa, e2e)
EXT_LENGTHS = (8192, 16384, 32768, 65536, 131072)
EXT_LR = 4e-4
EXT_TOKEN_SHARE = 0.05   # extension = 5% of the pretraining tokens at twice the batch tokens
FA_ROPE_THETA = {16384: 1e6, 32768: 2e6, 65536: 5e6, 131072: 1e7}  # fa beyond 8K; otherwise 500K (the preset)
E2E_PRETRAIN_ILR = 0.1   # e2e pretraining warms the inner lr up from 0.1x over the first 10% of steps
TOKENIZER = LLAMA3_TOKENIZER  # gated: `huggingface-cli login` with access granted


def memory(size: str, method: str, seq_len: int) -> tuple[dict, dict]:
    """(trainer settings, model.config settings) that decide memory: the strategy and activation checkpointing.

    Chosen so that ``ttt plan`` fits every e2e recipe on 80 GB (tests/tools/test_plan_fits.py): e2e keeps
    fewer inner-loop states as T/b grows (checkpointing through time), and 1b and 3b shard weights,
    gradients and AdamW state over the node (FSDP2, docs/multinode.md)."""
    config: dict = {"checkpoint_blocks": True}  # recompute whole-sequence blocks (prefix, fa, swa) in the backward pass
    trainer = {"strategy": "ddp"}
    if method == "e2e":
        config["checkpoint_chunks"] = "each" if seq_len <= 8192 else "sqrt" if seq_len <= 32768 else "log"
        if size in ("1b", "3b"):
            trainer["strategy"] = "fsdp2"  # lightning_ttt.lit.sharding.FSDP2Strategy (docs/multinode.md)
        if seq_len >= 131072:  # the prefix blocks' saved inputs dominate at 128K (3b: about 31 GB): keep them on the host
            config["offload_block_inputs"] = True
    return trainer, config


def trained_as(method: str, seq_len: int) -> str:
    """The method whose run serves ``method`` at ``seq_len``: swa within its window is full attention."""
    return "fa" if method == "swa" and seq_len <= WINDOW else method


def name(size: str, method: str, seq_len: int | None, budget: int = 1) -> str:
    """``pretrain-3b-fa-3x`` for pretraining (seq_len None), ``ext-3b-fa-128K-3x`` for an extension."""
    stage = f"pretrain-{size}-{method}" if seq_len is None else f"ext-{size}-{method}-{seq_len // 1024}K"
    return stage + (f"-{budget}x" if budget != 1 else "")


def checkpoint_dir(run: str) -> str:
    return f"runs/{run}/checkpoints"


def _trainer(run: str, steps: int, accumulate: int, settings: dict) -> dict:
    every = max(1, steps // 10)
    return {
        "accelerator": "gpu", "devices": DEVICES, "num_nodes": 1, **settings,
        "precision": "bf16-mixed", "max_steps": steps, "accumulate_grad_batches": accumulate,
        "gradient_clip_val": 1.0, "val_check_interval": every * accumulate,
        "check_val_every_n_epoch": None, "limit_val_batches": 16, "num_sanity_val_steps": 0,
        "log_every_n_steps": 10,
        "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                   "init_args": {"save_dir": "runs", "name": run, "default_hp_metric": False}},
        "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                       "init_args": {"dirpath": checkpoint_dir(run), "filename": "step{step:06d}",
                                     "auto_insert_metric_name": False, "save_last": True,
                                     "every_n_train_steps": every}}],
    }


def _data(seq_len: int, min_doc_tokens: int) -> dict:
    return {"sources": ["hf:emozilla/pg19@train"], "val_sources": ["hf:emozilla/pg19@validation"],
            "text_field": "text", "tokenizer": TOKENIZER, "packing": "concat", "min_doc_tokens": min_doc_tokens,
            "seq_len": seq_len, "batch_size": 1, "max_val_windows": 256, "shuffle_buffer": 64,
            "num_workers": 2, "distribute": "shards"}


def recipe(size: str, method: str, seq_len: int | None = None, budget: int = 1) -> tuple[str, dict]:
    """(name, recipe) of pretraining (``seq_len`` None) or of the extension to ``seq_len``."""
    seqs, steps, lr = SIZES[size]
    steps *= budget
    config: dict = {}
    same = trained_as(method, seq_len or PRETRAIN_LEN)
    if same != method:
        raise ValueError(f"{method} at {seq_len or PRETRAIN_LEN} tokens is {same} (the sequence fits the window)")
    if seq_len is None:
        length, init_from, min_doc = PRETRAIN_LEN, None, PRETRAIN_LEN
        if method == "e2e":
            config.update(ilr_init=E2E_PRETRAIN_ILR, ilr_warmup_steps=steps // 10)
    else:
        pre_tokens = seqs * PRETRAIN_LEN * steps
        seqs = 2 * seqs * PRETRAIN_LEN // seq_len            # twice the pretraining batch tokens
        steps = int(EXT_TOKEN_SHARE * pre_tokens / (seqs * seq_len))
        length, lr, min_doc = seq_len, EXT_LR, 0
        init_from = f"{checkpoint_dir(name(size, trained_as(method, PRETRAIN_LEN), None, budget))}/last.ckpt"
        if method == "fa" and seq_len in FA_ROPE_THETA:
            config["rope_theta"] = FA_ROPE_THETA[seq_len]
    run = name(size, method, seq_len, budget)
    trainer_settings, memory_config = memory(size, method, length)
    config.update(memory_config)
    model = {"preset": size, "method": method, "config": config or None, "lr": lr, "end_lr": 1e-5,
             "warmup_fraction": 0.1, "init_from": init_from}
    return run, {"seed_everything": 0, "trainer": _trainer(run, steps, seqs // DEVICES, trainer_settings),
                 "model": model, "data": _data(length, min_doc)}


def all_recipes() -> dict[str, dict]:
    """Every recipe by name, pretraining before the extensions that start from it."""
    out = {}
    for size in SIZES:
        for budget in BUDGETS.get(size, (1,)):
            for method in METHODS:
                if trained_as(method, PRETRAIN_LEN) == method:
                    run, spec = recipe(size, method, None, budget)
                    out[run] = spec
            for method in METHODS:
                for seq_len in EXT_LENGTHS:
                    if trained_as(method, seq_len) == method:
                        run, spec = recipe(size, method, seq_len, budget)
                        out[run] = spec
    return out


HEADER = """# {name}: generated by recipes/paper/generate.py from the paper's tables; edit them there and regenerate.
# {what}
# Global batch = {devices} GPUs x data.batch_size 1 x accumulate_grad_batches {acc} = {seqs} sequences of {seq_len}.
# Data: PG-19 from the hub with the Llama-3 tokenizer (gated; the paper used DCLM for pretraining and Books3 for
# extension), cut from one continuous token stream. Checkpoints: {ckpt}/ (last.ckpt is the final one).
# Multi-node: set trainer.num_nodes and launch with torchrun or srun (docs/multinode.md). e2e meta-training
# runs under ddp or fsdp2; Lightning's fsdp (FSDP1) and DeepSpeed ZeRO-3 are refused for it. Activation checkpointing:
# model.config.checkpoint_blocks per whole-sequence block (offload_block_inputs keeps their inputs on the host);
# checkpoint_chunks through time for e2e (each, sqrt, log).
# Check memory first: ttt plan --config THIS_FILE
"""


def main() -> None:
    for path in HERE.glob("*.yaml"):
        path.unlink()
    for run, spec in all_recipes().items():
        t, m = spec["trainer"], spec["model"]
        what = ("Pretraining at 8K, lr warm-up 10% then cosine to 1e-5." if m["init_from"] is None else
                f"Extension: lr 4e-4, 5% of the pretraining tokens, weights-only start from {m['init_from']}.")
        head = HEADER.format(name=run, what=what, devices=DEVICES, acc=t["accumulate_grad_batches"],
                             seqs=DEVICES * t["accumulate_grad_batches"], seq_len=spec["data"]["seq_len"],
                             ckpt=checkpoint_dir(run))
        (HERE / f"{run}.yaml").write_text(head + yaml.safe_dump(spec, sort_keys=False))


if __name__ == "__main__":
    main()
