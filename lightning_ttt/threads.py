"""How many CPU threads torch uses by default: the cores that are not already busy.

PyTorch starts one thread per physical core. On a machine where other jobs already keep every
core busy, that many threads fight over the cores and a training step can take several times
longer than with one thread; ``ttt`` therefore starts with the cores that are free now: the busy
share of the CPUs over a fifth of a second (``/proc/stat``), or the 1-minute load average where that
is missing. (The load average lags: right after a job ends it still counts it, and an idle machine
got one thread instead of two.) ``OMP_NUM_THREADS`` (read by torch at start-up), ``--trainer.threads``
and the tools' ``--threads`` choose the number instead.
"""

from __future__ import annotations

import os
import time


def logical_cores() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def physical_cores() -> int:
    """Physical cores available to this process (logical ones when psutil is missing)."""
    logical = logical_cores()
    try:
        import psutil
    except ImportError:
        return logical
    return max(1, min(logical, psutil.cpu_count(logical=False) or logical))


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
    return total - idle, total


def busy_cores(interval: float = 0.2) -> float:
    """How many CPUs other processes keep busy now: their busy share over ``interval`` seconds times the
    CPU count (Linux); elsewhere the 1-minute load average."""
    before = _cpu_times()
    if before is None:
        return os.getloadavg()[0]
    time.sleep(interval)
    after = _cpu_times()
    busy, total = after[0] - before[0], after[1] - before[1]
    return busy / total * (os.cpu_count() or 1) if total > 0 else os.getloadavg()[0]


def default_threads(load: float | None = None, logical: int | None = None, physical: int | None = None) -> int:
    """The physical cores, less those busy now (``load``: busy cores, measured when None); at least 1."""
    load = busy_cores() if load is None else load
    logical = logical_cores() if logical is None else logical
    physical = physical_cores() if physical is None else physical
    return max(1, min(physical, logical - round(load)))


def use_default_threads() -> str | None:
    """Set torch's thread count to ``default_threads()`` unless OMP_NUM_THREADS chose it; returns a note
    when that is fewer threads than torch would use."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    import torch

    busy = busy_cores()
    before, threads = torch.get_num_threads(), default_threads(busy)
    torch.set_num_threads(threads)
    if threads >= before:
        return None
    return (f"defaulting to {threads} CPU thread{'s' if threads > 1 else ''} of {before}: the machine is busy ({busy:.1f} "
            f"cores in use); --trainer.threads N or OMP_NUM_THREADS=N choose")
