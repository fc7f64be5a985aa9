"""The programs in examples/ run as they are, with simulated devices, in-process and through a
daemon, and say what they did."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


import gpu_manager

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, socket: str | None) -> str:
    """Runs examples/NAME over 2x24GiB: in-process, or through the daemon at `socket`."""
    env = dict(os.environ)
    env.pop("GPUMGR_SOCKET", None)
    if socket is not None:
        env["GPUMGR_SOCKET"] = socket
    env["GPUMGR_SIMULATE"] = "2x24GiB"
    env["PYTHONPATH"] = str(Path(gpu_manager.__file__).resolve().parents[1])
    result = subprocess.run([sys.executable, str(EXAMPLES / name)], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def jobs_seen_by(socket: str | None) -> int | None:
    """What the daemon counted (None in-process): the example really used it."""
    if socket is None:
        return None
    return gpu_manager.GPUManager(socket=socket).get_gpu_stats()["jobs_processed"]


def test_batch_processor(daemon_for):
    socket = daemon_for("2x24GiB")
    out = run_example("batch_processor.py", socket)
    assert jobs_seen_by(socket) in (None, 24)
    assert "finished 24 jobs" in out and "22 succeeded, 2 failed" in out
    assert "jobs_processed=24 jobs_failed=2" in out
    assert "active_jobs=0 leased_memory=0" in out
    peak = int(re.search(r"peak_active_jobs=(\d+)", out).group(1))
    assert 1 <= peak <= 3
    devices = set(re.findall(r"MiB on (cuda:\d)", out))
    assert devices <= {"cuda:0", "cuda:1"} and devices


def test_model_processor(daemon_for):
    socket = daemon_for("2x24GiB")
    out = run_example("model_processor.py", socket)
    assert jobs_seen_by(socket) in (None, 15)
    assert "served 15 requests" in out and "0 errors" in out
    assert "jobs_processed=15 jobs_failed=0" in out and "leased_after=0" in out
    assert len(re.findall(r"^req-\d-\d: photo_\d_\d\.png\.glb", out, re.M)) == 15
