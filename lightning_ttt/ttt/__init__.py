"""Test-time training: the inner loop as pure functions over a dict of fast weights."""

from lightning_ttt.ttt.inner_loop import ChunkStep, InnerLoopOutput, chunk_step, initial_fast_weights, run_inner_loop
from lightning_ttt.ttt.objective import LMOutput, lm_loss
from lightning_ttt.ttt.schedule import chunk_passes, nesting_depth, peak_states, run_chunks
from lightning_ttt.ttt.update import UpdateFn, clip_scale, effective_inner_lr, global_norm, make_update, sgd_step

__all__ = ["ChunkStep", "InnerLoopOutput", "LMOutput", "UpdateFn", "chunk_passes", "chunk_step", "clip_scale",
           "effective_inner_lr", "global_norm", "initial_fast_weights", "lm_loss", "make_update", "nesting_depth",
           "peak_states", "run_chunks", "run_inner_loop", "sgd_step"]
