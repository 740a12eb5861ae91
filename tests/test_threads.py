"""The default CPU thread count: the physical cores that are not busy now, at least one, and the governor
that moves it with the load during a run."""

from __future__ import annotations

import pytest
import torch

import lightning_ttt.threads as threads
from lightning_ttt.threads import CpuMeter, ThreadGovernor, default_threads, following_the_load, use_default_threads


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


def test_cpu_meter_leaves_out_this_process(monkeypatch) -> None:
    readings = iter([(0.0, (100, 1000), 5.0), (2.0, (700, 1800), 6.5)])  # (wall s, (busy, total) jiffies, own CPU s)
    monkeypatch.setattr(CpuMeter, "_read", staticmethod(lambda: next(readings)))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    assert CpuMeter().others() == pytest.approx(600 / 800 * 4 - 1.5 / 2)  # 3 busy cores, 0.75 of them ours


def test_cpu_meter_counts_a_busy_neighbour_but_not_our_own_work() -> None:
    import subprocess
    import sys
    import time

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it start
        meter, end = CpuMeter(), time.monotonic() + 0.6
        while time.monotonic() < end:  # this process keeps a core busy too
            pass
        others = meter.others()
    finally:
        spinner.kill()
        spinner.wait()
    assert 0.6 <= others <= 1.5  # the spinner's core, not ours


class _FakeMeter:
    def __init__(self, readings: list[float | None]) -> None:
        self.readings = iter(readings)

    def others(self) -> float | None:
        return next(self.readings)


def test_governor_moves_threads_when_readings_agree_and_restores_them(monkeypatch) -> None:
    monkeypatch.setattr(threads, "logical_cores", lambda: 2)
    monkeypatch.setattr(threads, "physical_cores", lambda: 2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        governor = ThreadGovernor(every_s=0.0, agree=2)
        governor.meter = _FakeMeter([1.7, 0.1, 1.6, None, 1.4, 0.2, 0.0, 0.3])
        notes = [governor.poll() for _ in range(5)]
        assert notes[:4] == [None] * 4  # busy, idle, busy, no reading: no two agreeing readings yet
        assert notes[4] == "1 CPU thread instead of 2: other processes use 1.4 cores"
        assert torch.get_num_threads() == 1
        assert governor.poll() is None and torch.get_num_threads() == 1  # one idle reading is not enough
        assert governor.poll() == "2 CPU threads instead of 1: other processes use 0.0 cores"
        assert governor.poll() is None  # the count it wants already
        torch.set_num_threads(1)
        governor.restore()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_governor_reads_at_most_every_interval() -> None:
    governor = ThreadGovernor(every_s=3600.0)
    governor.meter = _FakeMeter([])  # a reading would raise StopIteration
    assert governor.poll() is None


def test_following_the_load_polls_before_each_call_and_restores(monkeypatch) -> None:
    monkeypatch.setattr(threads, "logical_cores", lambda: 2)
    monkeypatch.setattr(threads, "physical_cores", lambda: 2)
    monkeypatch.setattr(threads.CpuMeter, "others", lambda self: 1.8)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    said, seen = [], []
    try:
        with following_the_load(lambda x: seen.append((x, torch.get_num_threads())), said.append, every_s=0.0) as call:
            for x in range(3):
                call(x)
        assert seen == [(0, 2), (1, 1), (2, 1)]  # the second reading agrees with the first, before call 1
        assert said == ["1 CPU thread instead of 2: other processes use 1.8 cores"]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
