"""Crash safety of atomic writes: a full disk (RLIMIT_FSIZE) while saving a checkpoint leaves the
previous file intact and no temporary file behind; a writer killed midway leaves the previous file
intact and a temporary that the next write into the folder removes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from lightning_ttt.io import atomic_write, remove_abandoned_temporaries
from lightning_ttt.lit.checkpoint_io import AtomicCheckpointIO


@pytest.mark.slow  # a subprocess importing torch
def test_disk_full_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(4)}}, path)
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import resource, signal, sys, torch
        from lightning_ttt.lit.checkpoint_io import AtomicCheckpointIO
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # a disk with 200 kB left
        try:
            AtomicCheckpointIO().save_checkpoint({{"state_dict": {{"w": torch.ones(1_000_000)}}}}, {str(path)!r})
        except OSError as err:
            assert 'last.ckpt' in str(err) and 'disk' in str(err), err
            print(type(err).__name__, err.errno)
            sys.exit(3)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr  # the write failed with an OSError (not silently)
    assert done.stdout.split() == ["OSError", "27"]  # EFBIG, reported as such (the message names the file)
    assert path.read_bytes() == before  # the previous checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no partial or temporary file
    assert torch.load(path, weights_only=True)["state_dict"]["w"].shape == (4,)


@pytest.mark.slow  # a subprocess that kills itself
def test_a_write_killed_midway_keeps_the_file_and_the_next_write_removes_its_temporary(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_write(path, lambda f: f.write(b"previous"))
    script = textwrap.dedent(f"""
        import os, signal
        from lightning_ttt.io import atomic_write
        def write(f):
            f.write(b"half of the new")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        atomic_write({str(path)!r}, write)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert path.read_bytes() == b"previous"
    left = [p for p in tmp_path.iterdir() if p != path]
    assert len(left) == 1 and left[0].name.startswith(".last.ckpt.") and left[0].suffix == ".tmp"
    atomic_write(tmp_path / "step000100.ckpt", lambda f: f.write(b"next"))  # any later write into the folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "step000100.ckpt"]


def test_a_running_writers_temporary_is_left_alone(tmp_path):
    mine = tmp_path / f".last.ckpt.{os.getpid()}.abc123.tmp"  # this process is alive
    mine.write_bytes(b"in progress")
    folder = tmp_path / f".export.{os.getpid()}.x_y.tmp"
    folder.mkdir()
    assert remove_abandoned_temporaries(tmp_path) == []
    assert mine.exists() and folder.exists()
