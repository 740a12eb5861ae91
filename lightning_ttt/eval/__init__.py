"""Evaluation: loss by token position (and, later, context-length sweeps and NIAH)."""

from lightning_ttt.eval.position import PositionNLL, log2_buckets, plot_nll_by_position

__all__ = ["PositionNLL", "log2_buckets", "plot_nll_by_position"]
