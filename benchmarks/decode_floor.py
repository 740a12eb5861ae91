"""How close full-attention decoding is to the memory-bandwidth floor (prints numbers; never asserts).

Decoding one token with full attention reads every cached key and value once. This times, per layer,
reading a [B, Hkv, context, hd] key and value cache once (a sum) against SDPA's decode call on it
(the fused kernel ``InferenceSession`` uses), a hand-written q·Kᵀ/softmax/·V and SDPA's math path.

    python -m benchmarks.decode_floor                       # debug preset's shapes, 64K context, 2 threads
    python -m benchmarks.decode_floor --context 16384 --heads 4 --head-dim 32 --layers 4
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def median_time(fn, repeats: int) -> float:
    fn()  # first touch
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=int, default=65536)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--layers", type=int, default=4, help="layers with a full-attention cache")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    k, v = (torch.randn(1, args.heads, args.context, args.head_dim, generator=gen) for _ in range(2))
    q = torch.randn(1, args.heads, 1, args.head_dim, generator=gen)

    def math_path():
        with sdpa_kernel([SDPBackend.MATH]):
            return F.scaled_dot_product_attention(q, k, v)

    per_layer = {
        "read_kv_once": median_time(lambda: (k.sum(), v.sum()), args.repeats),
        "sdpa_fused": median_time(lambda: F.scaled_dot_product_attention(q, k, v), args.repeats),
        "hand_written": median_time(lambda: ((q @ k.mT) * args.head_dim ** -0.5).softmax(-1) @ v, args.repeats),
        "sdpa_math": median_time(math_path, args.repeats),
    }
    gbytes = 2 * k.numel() * k.element_size() / 1e9
    print(f"context {args.context}, {args.heads} heads of {args.head_dim}, fp32, {args.threads} threads; per layer "
          f"({gbytes * 1e3:.0f} MB of keys and values), then x{args.layers} layers:")
    for name, seconds in per_layer.items():
        print(f"  {name:<13} {seconds * 1e3:7.2f} ms  ({gbytes / seconds:5.1f} GB/s)  x{args.layers}: "
              f"{seconds * args.layers * 1e3:6.1f} ms")
    return per_layer


if __name__ == "__main__":
    main()
