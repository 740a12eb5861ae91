"""Inference prefill/decode speed and peak memory vs context length (fa, swa, e2e); see lightning_ttt.infer.bench.

    python -m benchmarks.infer_speed --lengths 1024 4096 16384           # same as `ttt bench ...`
    python -m benchmarks.infer_speed --device cuda --lengths 1024 65536 131072

Prints a table and writes JSON + PNG (+ TensorBoard scalars with --tensorboard DIR); never asserts.
"""

from __future__ import annotations

import sys

from lightning_ttt.infer.bench import main

if __name__ == "__main__":
    sys.exit(main())
