"""The default CPU thread count: the physical cores that are not busy now, at least one."""

from __future__ import annotations

import pytest
import torch

from lightning_ttt.threads import default_threads, use_default_threads


@pytest.mark.parametrize("load, logical, physical, threads", [
    (0.0, 2, 2, 2),  # an idle machine: every physical core
    (3.3, 2, 2, 1),  # busier than its cores: one thread
    (1.2, 2, 2, 1),
    (0.2, 16, 8, 8),  # hyper-threads: the physical cores
    (9.6, 16, 8, 6),
    (40.0, 16, 8, 1),
])
def test_default_threads(load, logical, physical, threads) -> None:
    assert default_threads(load, logical, physical) == threads


def test_omp_num_threads_wins(monkeypatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(torch, "set_num_threads", lambda n: pytest.fail("threads changed despite OMP_NUM_THREADS"))
    assert use_default_threads() is None and torch.get_num_threads() == before


def test_a_busy_machine_gets_fewer_threads_and_a_note(monkeypatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("lightning_ttt.threads.busy_cores", lambda: 64.0)
    try:
        torch.set_num_threads(2)
        note = use_default_threads()
        assert torch.get_num_threads() == 1
        assert note.startswith("defaulting to 1 CPU thread of 2: the machine is busy (64.0 cores in use)") and "--trainer.threads N" in note
    finally:
        torch.set_num_threads(before)


def test_busy_cores_sees_a_busy_process_and_falls_back_to_the_load_average(monkeypatch) -> None:
    import subprocess
    import sys

    import lightning_ttt.threads as threads

    idle = threads.busy_cores(0.3)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        threads.busy_cores(0.3)  # let it start
        busy = threads.busy_cores(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert 0 <= idle <= threads.os.cpu_count() and busy >= 0.8  # one spinning process is one busy core
    monkeypatch.setattr(threads, "_cpu_times", lambda: None)  # no /proc/stat
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.5, 1.0, 1.0))
    assert threads.busy_cores() == 2.5
