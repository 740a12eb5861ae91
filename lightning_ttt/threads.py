"""How many CPU threads torch uses by default: the cores that are not already busy, now and as the run goes.

PyTorch starts one thread per physical core. On a machine where other jobs already keep every
core busy, that many threads fight over the cores and a training step can take several times
longer than with one thread; ``ttt`` therefore starts with the cores that are free now: the busy
share of the CPUs over a fifth of a second (``/proc/stat``), or the 1-minute load average where that
is missing. (The load average lags: right after a job ends it still counts it, and an idle machine
got one thread instead of two.) Load also comes and goes during a run, so a ``ThreadGovernor`` polled
between steps measures the cores other processes used since its last reading (the machine's busy time
less this process's CPU time) and moves the thread count when two readings in a row agree.
``OMP_NUM_THREADS`` (read by torch at start-up), ``--trainer.threads`` and the tools' ``--threads``
choose a fixed number instead.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


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


class CpuMeter:
    """Cores that other processes kept busy between two readings: the machine's busy time (``/proc/stat``)
    less this process's CPU time, over the wall time in between. ``others()`` is None without /proc/stat."""

    def __init__(self) -> None:
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[float, tuple[int, int] | None, float]:
        return time.monotonic(), _cpu_times(), time.process_time()

    def others(self) -> float | None:
        """Other processes' busy cores since the previous call (or the meter's creation)."""
        (wall0, cpu0, own0), (wall1, cpu1, own1) = self._last, self._read()
        self._last = (wall1, cpu1, own1)
        if cpu0 is None or cpu1 is None or cpu1[1] <= cpu0[1] or wall1 <= wall0:
            return None
        machine = (cpu1[0] - cpu0[0]) / (cpu1[1] - cpu0[1]) * (os.cpu_count() or 1)
        return max(0.0, machine - (own1 - own0) / (wall1 - wall0))


def busy_cores(interval: float = 0.2) -> float:
    """How many CPUs other processes keep busy now: ``CpuMeter`` over ``interval`` seconds (Linux);
    elsewhere the 1-minute load average."""
    meter = CpuMeter()
    time.sleep(interval)
    others = meter.others()
    return os.getloadavg()[0] if others is None else others


def default_threads(load: float, logical: int | None = None, physical: int | None = None) -> int:
    """The physical cores, less the ``load`` (cores busy with other work); at least 1."""
    logical = logical_cores() if logical is None else logical
    physical = physical_cores() if physical is None else physical
    return max(1, min(physical, logical - round(load)))


def count_is_fixed(threads: int | None = None) -> bool:
    """Whether the user chose the thread count (a ``threads`` setting or ``OMP_NUM_THREADS``)."""
    return threads is not None or bool(os.environ.get("OMP_NUM_THREADS"))


def use_default_threads() -> str | None:
    """Set torch's thread count to ``default_threads`` of ``busy_cores()`` unless OMP_NUM_THREADS chose it;
    returns a note when that is fewer threads than torch would use."""
    if count_is_fixed():
        return None
    import torch

    busy = busy_cores()
    before, threads = torch.get_num_threads(), default_threads(busy)
    torch.set_num_threads(threads)
    if threads >= before:
        return None
    return (f"defaulting to {threads} CPU thread{'s' if threads > 1 else ''} of {before}: the machine is busy ({busy:.1f} "
            f"cores in use); --trainer.threads N or OMP_NUM_THREADS=N choose")


class ThreadGovernor:
    """Keeps torch's thread count at ``default_threads`` of what other processes use while a run goes on.

    ``poll()`` between steps: at most every ``every_s`` seconds it reads a ``CpuMeter``; when ``agree``
    readings in a row want the same count, different from the current one, it sets it and returns a note
    saying why. ``restore()`` sets back the count the run started with.
    """

    def __init__(self, every_s: float = 10.0, agree: int = 2) -> None:
        import torch

        self.every_s, self.agree = every_s, agree
        self.started = torch.get_num_threads()
        self.meter = CpuMeter()
        self._due = time.monotonic() + every_s
        self._wanted: deque[int] = deque(maxlen=agree)  # the counts the last readings asked for

    def poll(self) -> str | None:
        now = time.monotonic()
        if now < self._due:
            return None
        import torch

        self._due = now + self.every_s
        others = self.meter.others()
        if others is None:
            return None
        current, wanted = torch.get_num_threads(), default_threads(others)
        self._wanted.append(wanted)
        if wanted == current or self._wanted.count(wanted) < self.agree:
            return None
        torch.set_num_threads(wanted)
        return (f"{wanted} CPU thread{'s' if wanted > 1 else ''} instead of {current}: other processes use "
                f"{others:.1f} cores")

    def restore(self) -> None:
        import torch

        torch.set_num_threads(self.started)


@contextmanager
def following_the_load(function: Callable[..., Any], say: Callable[[str], None],
                       every_s: float = 10.0) -> Iterator[Callable[..., Any]]:
    """``function``, polling a ``ThreadGovernor`` before each call (its notes go to ``say``), for loops that
    are not Lightning's; the thread count is set back on leaving."""
    governor = ThreadGovernor(every_s)

    def call(*args: Any, **kwargs: Any) -> Any:
        note = governor.poll()
        if note:
            say(note)
        return function(*args, **kwargs)

    try:
        yield call
    finally:
        governor.restore()
