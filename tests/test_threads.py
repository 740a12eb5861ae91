"""The default CPU thread count: the physical cores the load average leaves free, at least one."""

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
    monkeypatch.setattr("os.getloadavg", lambda: (64.0, 64.0, 64.0))
    try:
        torch.set_num_threads(2)
        note = use_default_threads()
        assert torch.get_num_threads() == 1
        assert note.startswith("defaulting to 1 CPU thread of 2: the machine is busy (load average 64.0)") and "--trainer.threads N" in note
    finally:
        torch.set_num_threads(before)
