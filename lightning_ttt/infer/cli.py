"""``ttt export`` and ``ttt generate``."""

from __future__ import annotations

import argparse
import sys

import torch


def _error(command: str, err: BaseException) -> int:
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    print(f"ttt {command}: error: {line}", file=sys.stderr)
    return 2


def export_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ttt export",
                                     description="Write a checkpoint's weights as safetensors plus a JSON config.")
    parser.add_argument("ckpt", help="Lightning checkpoint (.ckpt) of a TTTLanguageModel")
    parser.add_argument("--out", required=True, help="new directory to create")
    args = parser.parse_args(argv)
    from lightning_ttt.infer.export import export_model
    from lightning_ttt.infer.loading import load_checkpoint

    try:
        loaded = load_checkpoint(args.ckpt)
        out = export_model(loaded.model, args.out, loaded.tokenizer)
    except (OSError, ValueError) as err:
        return _error("export", err)
    print(f"exported {loaded.model.cfg.name} to {out}")
    return 0


def _read_prompt(args: argparse.Namespace, tokenizer, bos_id: int) -> list[int]:
    raw = open(args.prompt_file, "rb").read() if args.prompt_file else sys.stdin.buffer.read()
    if args.ids:
        try:
            ids = [int(tok) for tok in raw.split()]
        except ValueError:
            raise ValueError("--ids expects whitespace-separated integer token ids") from None
    else:
        ids = tokenizer.encode(raw, where=args.prompt_file or "stdin").tolist()
    if not ids:
        raise ValueError("the prompt is empty; give text in --prompt-file or on stdin")
    return ([bos_id] if args.bos else []) + ids


def generate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ttt generate",
                                     description="Generate text, training the fast weights while reading (e2e).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="Lightning checkpoint (.ckpt)")
    source.add_argument("--model-dir", help="directory written by `ttt export`")
    parser.add_argument("--prompt-file", help="prompt text (default: read stdin)")
    parser.add_argument("--ids", action="store_true", help="the prompt is whitespace-separated token ids")
    parser.add_argument("--no-bos", dest="bos", action="store_false", help="do not prepend the BOS id")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--greedy", action="store_true")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-stop", dest="stop", action="store_false", help="do not stop at the EOS id")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (fewer is often faster on a busy machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from lightning_ttt.data.tokenizer import load_tokenizer
    from lightning_ttt.infer.generate import Generator
    from lightning_ttt.infer.loading import load_any
    from lightning_ttt.infer.sampling import SamplingConfig

    try:
        if args.max_new_tokens <= 0:
            raise ValueError(f"--max-new-tokens={args.max_new_tokens} must be >= 1")
        loaded = load_any(args.ckpt, args.model_dir)
        model = loaded.model.to(args.device)
        tokenizer = load_tokenizer(loaded.tokenizer)
        prompt = torch.tensor([_read_prompt(args, tokenizer, model.cfg.bos_id)], dtype=torch.long)
        sampling = SamplingConfig(greedy=args.greedy, temperature=args.temperature, top_k=args.top_k,
                                  top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                                  stop_ids=(model.cfg.eos_id,) if args.stop else (), seed=args.seed)
        generated: list[int] = []
        shown = 0

        def show(tokens: torch.Tensor) -> None:  # decode everything so far; print complete characters only
            nonlocal shown
            generated.append(int(tokens[0]))
            text = tokenizer.decode(generated)
            if not text.endswith("\ufffd"):
                sys.stdout.write(text[shown:])
                sys.stdout.flush()
                shown = len(text)

        out = Generator(model, loaded.update).generate(prompt, args.max_new_tokens, sampling, on_token=show)
    except (OSError, ValueError, RuntimeError) as err:
        return _error("generate", err)
    text = tokenizer.decode(generated)
    sys.stdout.write(text[shown:] + "\n")
    print(f"prefill: {out.prompt_tokens} tokens in {out.prefill_s:.3f} s ({out.prefill_tokens_per_s:.1f} tokens/s); "
          f"decode: {out.tokens.shape[1]} tokens in {out.decode_s:.3f} s ({out.decode_tokens_per_s:.1f} tokens/s)",
          file=sys.stderr)
    return 0
