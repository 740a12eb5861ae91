"""How many CPU threads torch uses by default: the cores that are not already busy.

PyTorch starts one thread per physical core. On a machine where other jobs already keep every
core busy, that many threads fight over the cores and a training step can take several times
longer than with one thread; ``ttt`` therefore starts with the cores left free by the load average.
``OMP_NUM_THREADS`` (read by torch at start-up), ``--trainer.threads`` and the tools' ``--threads``
choose the number instead.
"""

from __future__ import annotations

import os


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


def default_threads(load: float | None = None, logical: int | None = None, physical: int | None = None) -> int:
    """The physical cores, less those the 1-minute load average says are busy; at least 1."""
    load = os.getloadavg()[0] if load is None else load
    logical = logical_cores() if logical is None else logical
    physical = physical_cores() if physical is None else physical
    return max(1, min(physical, logical - round(load)))


def use_default_threads() -> str | None:
    """Set torch's thread count to ``default_threads()`` unless OMP_NUM_THREADS chose it; returns a note
    when that is fewer threads than torch would use."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    import torch

    before, threads = torch.get_num_threads(), default_threads()
    torch.set_num_threads(threads)
    if threads >= before:
        return None
    return (f"defaulting to {threads} CPU thread{'s' if threads > 1 else ''} of {before}: the machine is busy (load average "
            f"{os.getloadavg()[0]:.1f}); --trainer.threads N or OMP_NUM_THREADS=N choose")
