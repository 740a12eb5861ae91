"""Test-time training: the inner loop as pure functions over a dict of fast weights."""

from lightning_ttt.ttt.inner_loop import InnerLoopOutput, initial_fast_weights, run_inner_loop
from lightning_ttt.ttt.objective import LMOutput, lm_loss
from lightning_ttt.ttt.update import clip_scale, effective_inner_lr, global_norm, sgd_step

__all__ = ["InnerLoopOutput", "LMOutput", "clip_scale", "effective_inner_lr", "global_norm",
           "initial_fast_weights", "lm_loss", "run_inner_loop", "sgd_step"]
