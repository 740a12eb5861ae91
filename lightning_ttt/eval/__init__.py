"""Evaluation of trained checkpoints: loss by context length (``ttt eval-context``), needle retrieval (``ttt niah``)."""
