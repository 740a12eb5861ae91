"""Loader throughput: tokens/s of the training stream with byte and BPE tokenizers, raw and prepared.

Each row builds a ``LongContextDataModule`` over the stdlib corpus (debug recipe geometry:
512-token windows, batches of 8), starts the training loader and counts ``input_ids`` tokens
per second over ``--tokens`` tokens after the first batch (startup is reported separately).
The BPE tokenizer is trained here on part of the corpus unless ``--tokenizer`` names one.

    python -m benchmarks.data_speed                         # bytes + BPE, raw + prepared, 0 and 2 workers
    python -m benchmarks.data_speed --tokens 500000 --workers 0 --tokenizer path/to/tokenizer.json

The debug model trains at roughly 4,000-10,000 tokens/s on a 2-core CPU; the loader should stay
at least 10x above that. This script prints numbers only; it never asserts.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from itertools import islice
from pathlib import Path

from lightning_ttt.data import LongContextDataModule
from lightning_ttt.data.corpus import stdlib_files
from lightning_ttt.data.prepare import prepare

MODEL_TOKENS_PER_S = 10_000  # the debug model's training speed, upper end on a 2-core CPU


def train_bpe(path: Path, vocab_size: int, max_bytes: int = 4_000_000) -> Path:
    """A byte-level BPE tokenizer trained on the first ``max_bytes`` of the stdlib corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts, total = [], 0
    for _, file in stdlib_files():
        texts.append(file.read_text(encoding="utf-8", errors="replace"))
        total += len(texts[-1])
        if total >= max_bytes:
            break
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.save(str(path))
    return path


def measure(sources: list[str], tokenizer: str, workers: int, tokens: int, seq_len: int, batch_size: int) -> dict:
    dm = LongContextDataModule(sources=sources, tokenizer=tokenizer, seq_len=seq_len, batch_size=batch_size,
                               num_workers=workers, max_val_windows=8)
    start = time.perf_counter()
    dm.setup("fit")
    loader = iter(dm.train_dataloader())
    next(loader)
    ready = time.perf_counter()
    seen = 0
    for batch in islice(loader, max(1, tokens // (seq_len * batch_size))):
        seen += batch["input_ids"].numel()
    elapsed = time.perf_counter() - ready
    return {"startup_s": ready - start, "tokens_per_s": seen / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2_000_000, help="tokens to time per row (after the first batch)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers per row")
    parser.add_argument("--tokenizer", default=None, help="BPE tokenizer.json (default: train one, vocab 8192)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bpe = args.tokenizer or str(train_bpe(tmp / "bpe.json", 8192))
        print(f"{'tokenizer':<10} {'source':<9} {'workers':>7} {'startup s':>10} {'tokens/s':>12} {'x model':>8}")
        for name, tok in (("bytes", "bytes"), ("bpe-8k", bpe)):
            prepared = tmp / f"prepared-{name}"
            prepare(["stdlib"], prepared, tokenizer=tok, progress=False)
            for source, sources in (("raw", ["stdlib"]), ("prepared", [str(prepared)])):
                for workers in args.workers:
                    r = measure(sources, tok, workers, args.tokens, args.seq_len, args.batch_size)
                    print(f"{name:<10} {source:<9} {workers:>7} {r['startup_s']:>10.1f} {r['tokens_per_s']:>12,.0f} "
                          f"{r['tokens_per_s'] / MODEL_TOKENS_PER_S:>7.0f}x", flush=True)
    print(f"x model: multiple of the debug model's ~{MODEL_TOKENS_PER_S:,} training tokens/s (aim: >= 10x)")


if __name__ == "__main__":
    main()
