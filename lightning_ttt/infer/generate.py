"""Generation: prefill a batch of prompts, then decode token by token with test-time training."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor

from lightning_ttt.infer.sampling import SamplingConfig, sample
from lightning_ttt.infer.session import InferenceSession
from lightning_ttt.model.transformer import Transformer
from lightning_ttt.ttt.update import UpdateFn


@dataclass
class GenerationOutput:
    tokens: Tensor  # [B, N] generated ids; after a stop id a sequence repeats it
    finished: Tensor  # [B] bool: the sequence produced a stop id
    logits: Tensor | None  # [B, N, V] logits each token was chosen from, when requested
    prompt_tokens: int  # B·T
    prefill_s: float
    decode_s: float

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / max(self.prefill_s, 1e-9)

    @property
    def decode_tokens_per_s(self) -> float:
        steps = self.tokens.numel() - self.tokens.shape[0]  # the first token comes from prefill
        return steps / max(self.decode_s, 1e-9)


@dataclass
class Step:
    tokens: Tensor  # [B] the ids chosen at this step
    logits: Tensor  # [B, V] the logits they were chosen from
    finished: Tensor  # [B] bool after this step


class Generator:
    """Prefill + decode for fa, swa and e2e models.

    Prompts in a batch must have the same length (they advance together). For e2e, a TTT step is
    taken after every b tokens read, prompt tail and generated tokens alike (see ``InferenceSession``).
    """

    def __init__(self, model: Transformer, update: UpdateFn | None = None) -> None:
        self.model, self.update = model, update

    def check(self, prompt: Tensor, max_new_tokens: int) -> None:
        if prompt.dim() != 2 or prompt.shape[1] == 0:
            raise ValueError(f"the prompt is empty (shape {list(prompt.shape)}); give at least one token")
        vocab = self.model.cfg.vocab_size
        if prompt.min() < 0 or prompt.max() >= vocab:
            bad = prompt.max().item() if prompt.max() >= vocab else prompt.min().item()
            raise ValueError(f"prompt token id {bad} is outside the vocabulary [0, {vocab})")
        if max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")

    def stream(self, prompt: Tensor, max_new_tokens: int, sampling: SamplingConfig = SamplingConfig(),
               timings: dict[str, float] | None = None) -> Iterator[Step]:
        """Yield one ``Step`` per generated position; stops early when every sequence has stopped.

        prompt: [B, T] ids. ``timings`` (optional) receives ``prefill_s`` and ``decode_s``.
        """
        self.check(prompt, max_new_tokens)
        batch, length = prompt.shape
        session = InferenceSession(self.model, batch, capacity=length + max_new_tokens, update=self.update)
        gen = None
        if sampling.seed is not None:
            gen = torch.Generator(device=session.device).manual_seed(sampling.seed)
        timings = {} if timings is None else timings
        prompt = prompt.to(session.device)
        seen = torch.zeros(batch, self.model.cfg.vocab_size, dtype=torch.bool, device=session.device)
        seen.scatter_(1, prompt, True)
        stop = torch.tensor(sampling.stop_ids or [-1], device=session.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=session.device)
        started = time.perf_counter()
        logits = session.feed(prompt)[:, -1]  # [B, V]
        timings["prefill_s"] = time.perf_counter() - started
        timings["decode_s"] = 0.0
        last: Tensor | None = None
        for step in range(max_new_tokens):
            started = time.perf_counter()
            if last is not None:
                logits = session.feed(last[:, None])[:, -1]
            token = sample(logits, seen, sampling, gen)
            token = torch.where(finished, last if last is not None else token, token)  # stopped rows repeat
            finished = finished | torch.isin(token, stop)
            seen.scatter_(1, token[:, None], True)
            if step:
                timings["decode_s"] += time.perf_counter() - started
            last = token
            yield Step(token, logits, finished.clone())
            if bool(finished.all()):
                return

    def generate(self, prompt: Tensor, max_new_tokens: int, sampling: SamplingConfig = SamplingConfig(),
                 keep_logits: bool = False, on_token: Callable[[Tensor], None] | None = None) -> GenerationOutput:
        """Generate up to ``max_new_tokens`` per prompt; ``on_token`` gets each step's ids [B]."""
        timings: dict[str, float] = {}
        tokens, logits, finished = [], [], None
        for step in self.stream(prompt, max_new_tokens, sampling, timings):
            tokens.append(step.tokens)
            if keep_logits:
                logits.append(step.logits)
            finished = step.finished
            if on_token is not None:
                on_token(step.tokens)
        return GenerationOutput(torch.stack(tokens, 1), finished, torch.stack(logits, 1) if keep_logits else None,
                                prompt.numel(), timings["prefill_s"], timings["decode_s"])
