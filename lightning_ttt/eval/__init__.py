"""Evaluation: loss by token position, context-length evaluation and sweeps, needle retrieval."""

from lightning_ttt.eval.position import PositionCurve, PositionNLL, fixed_buckets, log2_buckets, plot_nll_by_position

__all__ = ["PositionCurve", "PositionNLL", "fixed_buckets", "log2_buckets", "plot_nll_by_position"]
