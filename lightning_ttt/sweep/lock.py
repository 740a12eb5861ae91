"""One writer per sweep output directory (a PID lock file), and children that die with the sweep."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning_ttt.io import process_running

LOCK = "sweep.lock"


@contextmanager
def out_dir_lock(out: Path) -> Iterator[Path]:
    """Hold ``out/sweep.lock`` (this process's PID) while the body runs; a live holder is refused."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK
    _acquire(path)
    try:
        yield path
    finally:
        if _holder(path) == os.getpid():
            path.unlink(missing_ok=True)


def _acquire(path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{LOCK}.", dir=path.parent)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        while True:
            try:
                os.link(tmp, path)  # atomic, and the file already holds the PID
                return
            except FileExistsError:
                pid = _holder(path)
                if pid is not None and process_running(pid):
                    raise FileExistsError(f"{path.parent} is in use by another ttt sweep (PID {pid}, lock {path})") \
                        from None
                print(f"ttt sweep: taking over the stale lock {path} (PID {pid} is not running)", file=sys.stderr)
                path.unlink(missing_ok=True)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _holder(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM (and SIGHUP) raise SystemExit(128 + signal) like Ctrl-C raises KeyboardInterrupt, so that
    ``finally`` blocks stop the running child and drop the lock."""
    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): a signal sent to this process when its parent dies


def die_with_parent(parent: int) -> None:
    """``preexec_fn`` of a child of process ``parent`` (the sweep): SIGTERM it when the sweep dies, even by
    SIGKILL (Linux only; elsewhere a no-op, and the sweep's own signal handling stops its children)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the sweep died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def stop_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the child's process group (it leads its own), then SIGKILL what is left after ``grace`` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
