"""Run a function in N gloo processes with a hard deadline, for the tests of cross-rank behaviour.

``torch.multiprocessing.spawn(join=True)`` waits forever for a worker that never exits, and a CI run once
hung that way after both ranks had finished their work. Here each rank writes its result atomically and
then meets the others at a barrier; the parent waits for every result (or a failed rank, or the deadline),
gives the processes a short grace to exit and kills what is left, so a stuck process fails the test in
minutes instead of stopping the suite.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

DEADLINE_S = 300.0
EXIT_GRACE_S = 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, out: str, fn: Callable[[int, int], Any]) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only: no hostname lookup
    torch.set_num_threads(1)  # two ranks on two cores, no oversubscription
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    try:
        result = fn(rank, world)
        partial = Path(out) / f"rank{rank}.pt.partial"
        torch.save(result, partial)
        os.replace(partial, Path(out) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable[[int, int], Any], out: Path, world: int = 2) -> list[Any]:
    """``fn(rank, world)`` in ``world`` gloo processes (a module-level function); their results, by rank."""
    context = mp.get_context("spawn")
    port = _free_port()
    processes = [context.Process(target=_rank_main, args=(rank, world, port, str(out), fn), daemon=True)
                 for rank in range(world)]
    for process in processes:
        process.start()
    paths = [out / f"rank{rank}.pt" for rank in range(world)]
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not all(p.exists() for p in paths):
            failed = [r for r, p in enumerate(processes) if p.exitcode not in (None, 0)]
            if failed:
                pytest.fail(f"rank {failed[0]} exited with code {processes[failed[0]].exitcode}")
            if time.monotonic() > deadline:
                pytest.fail(f"ranks did not finish within {DEADLINE_S:.0f} s")
            time.sleep(0.2)
        for process in processes:
            process.join(EXIT_GRACE_S)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
    return [torch.load(p, weights_only=True) for p in paths]
