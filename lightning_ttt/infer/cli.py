"""``ttt export`` and ``ttt generate``."""

from __future__ import annotations

import sys

import torch

from lightning_ttt.data.tokenizer import Tokenizer
from lightning_ttt.infer.export import export_model
from lightning_ttt.infer.generate import Generator
from lightning_ttt.infer.loading import fitting_tokenizer, load_any, load_checkpoint
from lightning_ttt.infer.sampling import SamplingConfig


def export(ckpt: str, /, *, out: str) -> int:
    """Write a checkpoint's weights as safetensors plus a JSON config (loads without pickle).

    Args:
        ckpt: Lightning checkpoint (.ckpt) of a TTTLanguageModel.
        out: new directory to create.
    """
    loaded = load_checkpoint(ckpt)
    path = export_model(loaded.model, out, loaded.tokenizer)
    print(f"exported {loaded.model.cfg.name} to {path}")
    return 0


class IdsOnly:
    """Stands in for a tokenizer when a model records none and the prompt is ids: prints ids."""

    def decode(self, ids: list[int]) -> str:
        return "".join(f" {i}" for i in ids)


def read_prompt(prompt_file: str | None, ids: bool, bos_id: int | None, tokenizer: Tokenizer | IdsOnly) -> list[int]:
    """Token ids of the prompt in ``prompt_file`` (stdin when None), BOS first unless ``bos_id`` is None."""
    raw = open(prompt_file, "rb").read() if prompt_file else sys.stdin.buffer.read()
    if ids:
        try:
            tokens = [int(tok) for tok in raw.split()]
        except ValueError:
            raise ValueError("--ids expects whitespace-separated integer token ids") from None
    else:
        tokens = tokenizer.encode(raw, where=prompt_file or "stdin").tolist()
    if not tokens:
        raise ValueError("the prompt is empty; give text in --prompt-file or on stdin")
    return ([] if bos_id is None else [bos_id]) + tokens


def generate(*, ckpt: str | None = None, model_dir: str | None = None, prompt_file: str | None = None,
             ids: bool = False, bos: bool = True, max_new_tokens: int = 256, greedy: bool = False,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
             seed: int | None = None, stop: bool = True, device: str = "cpu", threads: int | None = None,
             tokenizer: str | None = None) -> int:
    """Generate text, training the fast weights while reading (e2e); streams it to stdout.

    Prefill and decode speed go to stderr.

    Args:
        ckpt: Lightning checkpoint (.ckpt).
        model_dir: directory written by `ttt export` (instead of --ckpt).
        prompt_file: prompt text (default: read stdin).
        ids: the prompt is whitespace-separated token ids (without a tokenizer, the output is ids too).
        bos: prepend the BOS id (--no-bos: do not).
        max_new_tokens: tokens to generate.
        greedy: argmax decoding (ignores temperature, top-k and top-p).
        temperature: sampling temperature.
        top_k: keep the k most likely tokens (0: all).
        top_p: nucleus sampling threshold (1: off).
        repetition_penalty: > 1 discourages tokens already seen.
        seed: sampling seed.
        stop: stop at the EOS id (--no-stop: do not).
        device: torch device.
        threads: CPU threads (default: the cores not already busy).
        tokenizer: tokenizer.json or hub name replacing the one the model records.
    """
    if max_new_tokens <= 0:
        raise ValueError(f"--max-new-tokens={max_new_tokens} must be >= 1")
    try:  # bad sampling settings are reported before the model loads, under their option names
        SamplingConfig(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p,
                       repetition_penalty=repetition_penalty)
    except ValueError as err:
        name, _, rest = str(err).partition("=")  # "top_p=2.0 must be ..." -> "--top-p=2.0 must be ..."
        raise ValueError(f"--{name.replace('_', '-')}={rest}") from None
    if threads:
        torch.set_num_threads(threads)
    loaded = load_any(ckpt, model_dir)
    model = loaded.model.to(device)
    if ids and not (tokenizer or loaded.tokenizer):
        codec: Tokenizer | IdsOnly = IdsOnly()
    else:
        codec = fitting_tokenizer(loaded.tokenizer_spec(tokenizer), model.cfg)
    prompt = torch.tensor([read_prompt(prompt_file, ids, model.cfg.bos_id if bos else None, codec)])
    sampling = SamplingConfig(greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p,
                              repetition_penalty=repetition_penalty, stop_ids=(model.cfg.eos_id,) if stop else (),
                              seed=seed)
    generated: list[int] = []
    shown = 0

    def show(tokens: torch.Tensor) -> None:  # decode everything so far; print complete characters only
        nonlocal shown
        generated.append(int(tokens[0]))
        text = codec.decode(generated)
        if not text.endswith("\ufffd"):
            sys.stdout.write(text[shown:])
            sys.stdout.flush()
            shown = len(text)

    out = Generator(model, loaded.update).generate(prompt, max_new_tokens, sampling, on_token=show)
    sys.stdout.write(codec.decode(generated)[shown:] + "\n")
    print(f"prefill: {out.prompt_tokens} tokens in {out.prefill_s:.3f} s ({out.prefill_tokens_per_s:.1f} tokens/s); "
          f"decode: {out.tokens.shape[1]} tokens in {out.decode_s:.3f} s ({out.decode_tokens_per_s:.1f} tokens/s)",
          file=sys.stderr)
    return 0
