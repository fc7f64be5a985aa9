"""`gpumgr serve`, `gpumgr run` and `gpumgr status` through the real binary (GPUMGR_BIN).

Each test starts its own daemon on a simulated 10 GiB device in a temporary folder. Waits
poll a condition with a deadline; nothing relies on a sleep being long enough.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from cli_helpers import answers, eventually

GPUMGR = os.environ.get("GPUMGR_BIN", "gpumgr")
GIB = 1024**3


class Daemon:
    def __init__(self, tmp, spec="1x10GiB", jobs=3):
        self.socket = os.path.join(tmp, "gpumgr.sock")
        self.proc = subprocess.Popen(
            [GPUMGR, "serve", "--socket", self.socket, "--no-http", "--simulate", spec,
             "--memory-limit", "1", "--max-concurrent-jobs", str(jobs),
             "--state-dir", os.path.join(tmp, "state")],
            stderr=subprocess.PIPE, text=True)
        assert eventually(lambda: answers(self.socket) or self.proc.poll() is not None)
        assert self.proc.poll() is None, self.proc.stderr.read()

    def status(self):
        out = subprocess.run([GPUMGR, "status", "--json", "--socket", self.socket],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=10)


@pytest.fixture
def daemon():
    with tempfile.TemporaryDirectory() as tmp:
        d = Daemon(tmp)
        yield d
        assert d.stop() == 0


def run(d, *cmd, vram="1GiB", extra=(), **kw):
    return subprocess.run([GPUMGR, "run", "--socket", d.socket, "--vram", vram, *extra, "--", *cmd],
                          capture_output=True, text=True, timeout=30, **kw)


def test_run_passes_the_exit_code_through(daemon):
    assert run(daemon, "sh", "-c", "exit 7").returncode == 7
    assert run(daemon, "true").returncode == 0
    assert run(daemon, "sh", "-c", "kill -9 $$").returncode == 128 + 9
    missing = run(daemon, "/nonexistent/cmd")
    assert missing.returncode == 127
    assert daemon.status()["leases"] == []


def test_run_sets_the_environment(daemon):
    r = run(daemon, "sh", "-c",
            'echo "$CUDA_VISIBLE_DEVICES|$CUDA_DEVICE_ORDER|$GPUMGR_LEASE_JOB_ID|$GPUMGR_LEASE_DEVICES"',
            extra=("--job-id", "train-1"))
    assert r.returncode == 0, r.stderr
    uuid = daemon.status()["devices"][0]["uuid"]
    assert r.stdout.strip() == f"{uuid}|PCI_BUS_ID|train-1|0"
    r = run(daemon, "sh", "-c", 'echo "$GPUMGR_LEASE_JOB_ID"')
    assert r.stdout.strip().startswith(f"run-{socket.gethostname()}-")


def test_run_holds_the_lease_while_the_command_runs_and_forwards_signals(daemon):
    with tempfile.TemporaryDirectory() as tmp:
        ready = os.path.join(tmp, "ready")
        script = f'trap "exit 42" TERM; trap "exit 43" INT; touch {ready}; while :; do sleep 0.02; done'
        for sig, code in ((signal.SIGTERM, 42), (signal.SIGINT, 43)):
            if os.path.exists(ready):
                os.unlink(ready)
            p = subprocess.Popen([GPUMGR, "run", "--socket", daemon.socket, "--vram", "3GiB",
                                  "--job-id", "held", "--", "sh", "-c", script],
                                 stderr=subprocess.PIPE, text=True)
            assert eventually(lambda: os.path.exists(ready))
            st = daemon.status()
            assert [l["job_id"] for l in st["leases"]] == ["held"]
            lease = st["leases"][0]
            assert lease["pid"] == p.pid
            assert lease["uid"] == os.getuid()
            assert lease["bytes"] == 3 * GIB
            assert "sh -c" in lease["command"]
            p.send_signal(sig)
            assert p.wait(timeout=10) == code
            assert daemon.status()["leases"] == []


def test_run_waits_and_times_out(daemon):
    with tempfile.TemporaryDirectory() as tmp:
        ready = os.path.join(tmp, "ready")
        holder = subprocess.Popen([GPUMGR, "run", "--socket", daemon.socket, "--vram", "10GiB",
                                   "--", "sh", "-c", f"touch {ready}; sleep 30"])
        assert eventually(lambda: os.path.exists(ready))
        r = run(daemon, "true", extra=("--timeout", "0.2"))
        assert r.returncode == 1
        assert "timed_out" in r.stderr
        # A waiter killed by SIGINT while queued leaves nothing behind.
        waiter = subprocess.Popen([GPUMGR, "run", "--socket", daemon.socket, "--vram", "1GiB",
                                   "--", "true"], stderr=subprocess.PIPE, text=True)
        assert eventually(lambda: len(daemon.status()["queue"]) == 1)
        waiter.send_signal(signal.SIGINT)
        assert waiter.wait(timeout=10) == 128 + signal.SIGINT
        assert daemon.status()["queue"] == []
        holder.kill()  # kill -9 of `gpumgr run` itself: the daemon releases its lease
        holder.wait()
        assert eventually(lambda: daemon.status()["leases"] == [])


def test_status_shows_the_daemons_view_via_gpumgr_socket(daemon):
    env = dict(os.environ, GPUMGR_SOCKET=daemon.socket)
    out = subprocess.run([GPUMGR, "status", "--json"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["source"] == "daemon at " + daemon.socket
    r = subprocess.run([GPUMGR, "run", "--vram", "1GiB", "--", "true"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_no_daemon_says_where_it_looked():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "none.sock")
        r = subprocess.run([GPUMGR, "run", "--socket", path, "--vram", "1GiB", "--", "true"],
                           capture_output=True, text=True)
        assert r.returncode == 3
        assert f"no daemon at {path}: start it with `gpumgr serve --socket {path}`" in r.stderr


def test_serve_refuses_a_live_socket_and_stops_cleanly_on_sigterm():
    with tempfile.TemporaryDirectory() as tmp:
        d = Daemon(tmp)
        second = subprocess.run([GPUMGR, "serve", "--socket", d.socket, "--no-http",
                                 "--simulate", "1x10GiB"], capture_output=True, text=True,
                                timeout=10)
        assert second.returncode == 1
        assert "already listening" in second.stderr
        ready = os.path.join(tmp, "ready")
        holder = subprocess.Popen([GPUMGR, "run", "--socket", d.socket, "--vram", "10GiB",
                                   "--", "sh", "-c", f"touch {ready}; sleep 30"])
        assert eventually(lambda: os.path.exists(ready))
        # The waiter keeps its place for the next daemon; none comes within its 1 s.
        waiter = subprocess.Popen([GPUMGR, "run", "--socket", d.socket, "--vram", "1GiB",
                                   "--", "true"], stderr=subprocess.PIPE, text=True,
                                  env=dict(os.environ, GPUMGR_REATTACH_TIMEOUT="1"))
        assert eventually(lambda: len(d.status()["queue"]) == 1)
        assert d.stop() == 0
        assert waiter.wait(timeout=10) == 3
        assert "no daemon came back within 1 s" in waiter.stderr.read()
        assert not os.path.exists(d.socket)
        holder.kill()
        holder.wait()
        # A stale socket (a daemon killed with SIGKILL) is replaced by the next daemon.
        d2 = Daemon(tmp)
        d2.proc.kill()
        d2.proc.wait()
        assert os.path.exists(d2.socket)
        d3 = Daemon(tmp)
        assert d3.stop() == 0


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
