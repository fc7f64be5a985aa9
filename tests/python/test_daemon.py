"""The same Python code over the gpumgr daemon (GPUMGR_SOCKET): one budget for every process.

Runs only where the gpumgr binary is built next to the module (<build>/src/cli/gpumgr, or
GPUMGR_TEST_GPUMGR_BIN); skips with a reason otherwise. These are what only a daemon does
(one budget across processes, a holder's death, a stopped daemon); every API test of the
other files also runs through a daemon (conftest.py's `mode` fixture).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

import gpu_manager
from gpu_manager import GPUCapacityError, GPUManager, QueueTimeoutError
from conftest import wait_until


@pytest.fixture
def daemon(start_serve, monkeypatch):
    socket = start_serve("--simulate", "2x24GiB", "--max-concurrent-jobs", "3")
    monkeypatch.setenv("GPUMGR_SOCKET", str(socket))
    yield socket


def test_managers_share_the_daemon_budget(daemon):
    a = GPUManager()
    b = GPUManager()
    assert a.get_gpu_stats()["source"] == f"daemon at {daemon}"
    leases = [a.allocate_job(f"a{i}", 19000) for i in range(2)]
    assert b.can_process_job(19000) is False
    with pytest.raises(GPUCapacityError):
        b.allocate_job("b", 19000)
    with pytest.raises(QueueTimeoutError):
        with b.managed_generation("b-wait", 19000, timeout=0.1):
            pass
    leases[0].release()
    with b.managed_generation("b-now", 19000, timeout=5) as lease:
        assert lease.device == leases[0].device
    leases[1].release()
    stats = b.get_gpu_stats()
    assert (stats["jobs_processed"], stats["active_jobs"], stats["leased_memory"]) == (3, 0, 0)


def test_a_lease_dies_with_its_process(daemon):
    code = ("import gpu_manager, time; m = gpu_manager.GPUManager(); "
            "l = m.allocate_job('other-process', 19000); print('held', flush=True); time.sleep(60)")
    env = dict(os.environ, PYTHONPATH=str(Path(gpu_manager.__file__).resolve().parents[1]))
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        m = GPUManager()
        assert m.get_gpu_stats()["leased_memory"] == 19000 * 1024**2
    finally:
        child.kill()
        child.wait()
    wait_until(lambda: m.get_gpu_stats()["leased_memory"] == 0,
               "the killed holder's lease to end", timeout=5)


def test_job_kinds_through_the_daemon(daemon, tmp_path):
    with pytest.warns(RuntimeWarning, match="state_path=.* is not used: the daemon keeps"):
        m = GPUManager(state_path=tmp_path / "ignored.db")
    assert not (tmp_path / "ignored.db").exists()
    with m.managed_generation("kinded", 1000, job_kind="sdxl") as lease:
        assert lease.kind == "sdxl"
        (entry,) = m.get_gpu_stats()["leases"]
        assert (entry["job_id"], entry["kind"], entry["leased_memory"]) == (
            "kinded", "sdxl", 1000 * 1024**2)
    with m.managed_generation("defaulted", None, job_kind="sdxl",
                              default_memory_mb=2000) as lease:
        assert lease.memory_mb == 2000 and lease.estimate.startswith("default")
    estimates = {e["kind"]: e for e in m.get_estimates()}
    assert estimates["sdxl"]["runs"] == 2
    assert m.forget_estimates("sdxl") is True and m.get_estimates() == []


def test_calls_end_at_their_deadline_when_the_daemon_stops(start_serve, monkeypatch):
    monkeypatch.setenv("GPUMGR_CLIENT_TIMEOUT", "1")
    socket = start_serve("--simulate", "2x24GiB")
    monkeypatch.setenv("GPUMGR_SOCKET", str(socket))
    mgr = GPUManager(device="cuda", max_concurrent_jobs=3, memory_limit=0.8)
    assert mgr.get_gpu_stats()  # connected
    daemon = start_serve.process
    daemon.send_signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(Exception) as quick:
            mgr.get_gpu_stats()
        assert "did not answer within 1 s" in str(quick.value)
        assert time.monotonic() - start < 1 + 2
        start = time.monotonic()
        with pytest.raises(Exception) as waiting:
            with mgr.managed_generation("late", required_memory_mb=1024, timeout=1):
                pass
        # Its quick calls (1 s) or the acquire itself (timeout + 1 s), whichever comes first.
        assert "did not answer within" in str(waiting.value)
        assert time.monotonic() - start < 2 + 2
    finally:
        daemon.send_signal(signal.SIGCONT)
    # The daemon, resumed, may grant a given-up acquire; the client gives it back at its next
    # call instead of holding it unknown, and the manager works again.
    wait_until(lambda: mgr.snapshot()["leases"] == [], "the given-up lease to be given back")


def test_the_daemons_limits_are_the_ones_reported(start_serve, monkeypatch):
    """With the daemon its settings apply host-wide: the manager reports them (not its own
    arguments) and says when an argument asked for something else."""
    socket = start_serve("--simulate", "2x24GiB", "--max-concurrent-jobs", "5",
                         "--memory-limit", "0.7")
    monkeypatch.setenv("GPUMGR_SOCKET", str(socket))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the defaults ask for nothing: no warning
        plain = GPUManager()
    assert (plain.max_concurrent_jobs, plain.memory_limit) == (5, 0.7)
    stats = plain.get_gpu_stats()
    assert (stats["max_concurrent_jobs"], stats["memory_limit"]) == (5, 0.7)
    with pytest.warns(RuntimeWarning) as caught:
        asked = GPUManager(max_concurrent_jobs=7, memory_limit=0.5, placement="spread")
    assert sorted(str(w.message) for w in caught) == [
        f"max_concurrent_jobs=7 is not used: the daemon at {socket} applies 5 host-wide "
        "(gpumgr serve --max-concurrent-jobs)",
        f"memory_limit=0.5 is not used: the daemon at {socket} applies 0.7 host-wide "
        "(gpumgr serve --memory-limit)",
        f"placement='spread' is not used: the daemon at {socket} applies 'best-fit' host-wide",
    ]
    assert (asked.max_concurrent_jobs, asked.memory_limit) == (5, 0.7)
    assert asked.get_gpu_stats()["max_concurrent_jobs"] == 5
    # What applies is what the reports say: five leases, not seven.
    leases = [asked.allocate_job(f"j{i}", 100) for i in range(5)]
    assert asked.can_process_job(100) is False
    for lease in leases:
        lease.release()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_lease_held_in_python_survives_a_restart_of_the_daemon(start_serve, monkeypatch, how):
    """Before, the block ended with no error and the next grant silently came from the new
    daemon, which knew nothing of this lease."""
    socket = start_serve("--simulate", "1x24GiB")
    monkeypatch.setenv("GPUMGR_SOCKET", str(socket))
    mgr = GPUManager(device="cuda", max_concurrent_jobs=3, memory_limit=0.8)
    with mgr.managed_generation("py-hold", required_memory_mb=4096):
        first = start_serve.process
        first.send_signal(how)
        first.wait(timeout=10)
        start_serve("--simulate", "1x24GiB")
        # The new daemon adopted it, and this process took it back by itself.
        wait_until(lambda: [l["job_id"] for l in mgr.snapshot()["leases"]] == ["py-hold"],
                   "the restarted daemon to list the lease")
        lease = mgr.snapshot()["leases"][0]
        assert lease["pid"] == os.getpid() and lease["bytes"] == 4096 * 1024**2
        other = GPUManager(device="cuda")
        with pytest.raises(Exception, match="already active or waiting"):
            with other.managed_generation("py-hold", required_memory_mb=1024, timeout=0):
                pass
    assert mgr.snapshot()["leases"] == []
    assert mgr.snapshot()["stats"]["jobs_succeeded"] == 1


def test_python_raises_lease_lost_when_no_daemon_comes_back(start_serve, monkeypatch):
    monkeypatch.setenv("GPUMGR_REATTACH_TIMEOUT", "1")
    socket = start_serve("--simulate", "1x24GiB")
    monkeypatch.setenv("GPUMGR_SOCKET", str(socket))
    mgr = GPUManager(device="cuda")
    with pytest.raises(gpu_manager.LeaseLostError,
                       match="lease lost: .*no daemon came back within 1 s") as lost:
        with mgr.managed_generation("py-orphan", required_memory_mb=1024):
            start_serve.process.kill()
            start_serve.process.wait(timeout=10)
            time.sleep(2)  # the holder's work goes on past the reattach timeout
    assert lost.value.code == "lease_lost"
