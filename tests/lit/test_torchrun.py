"""``ttt fit`` launched by ``torchrun --nproc_per_node 2`` on CPU (gloo over loopback), as docs/multinode.md
shows it: both ranks train the same number of steps on different data and end with the same weights (the
same loss on one fixed batch), with DDP and with FSDP2.

The run has a hard deadline: on expiry the whole process group gets SIGTERM (torchrun passes it to its
workers), then SIGKILL, so a stuck rank fails the test instead of hanging CI.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
DEADLINE_S = 240
STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the launcher's process group (torchrun forwards it to the ranks), then SIGKILL."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass


@pytest.mark.slow  # two ranks of a real ttt fit
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_torchrun_two_ranks_train_in_step(tmp_path: Path, strategy: str) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "lightning_ttt", "fit",
               "--config", str(REPO / "recipes/debug/e2e.yaml"), "--trainer.devices", "2",
               "--trainer.strategy", strategy, f"--trainer.max_steps={STEPS}", "--trainer.limit_val_batches=0",
               "--data.seq_len=64", "--data.batch_size=2", "--data.max_val_windows=2", "--trainer.threads=1",
               f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}", "--trainer.enable_progress_bar=false",
               "--trainer.callbacks+=launch_probe.RankReport", f"--trainer.callbacks.out_dir={tmp_path}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        _stop(process)
        output = process.communicate()[0]
        pytest.fail(f"torchrun did not finish within {DEADLINE_S} s: {output[-2000:]}")
    finally:
        _stop(process)
    assert process.returncode == 0, output[-3000:]
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    for rank, report in enumerate(reports):
        assert (report["rank"], report["world_size"], report["global_step"]) == (rank, 2, STEPS)
        assert report["strategy"] == {"ddp": "DDPStrategy", "fsdp2": "FSDP2Strategy"}[strategy]
    assert reports[0]["last_train_loss"] != reports[1]["last_train_loss"]  # the ranks read different data
    assert reports[0]["fixed_batch_loss"] == pytest.approx(reports[1]["fixed_batch_loss"], rel=1e-6, abs=0)
