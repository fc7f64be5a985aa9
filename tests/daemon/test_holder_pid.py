"""A client may take a lease for a process it started (`holder_pid`, docs/protocol.md): the
Slurm plugin does, for each task of slurmstepd. That process's memory is the lease's use, so
two tasks of one client each see their own; the lease still lives as long as the client's
connection, and it survives a daemon restart with its holder. A pid that is not the client's
own child, grandchild, ... (or runs as another uid) is refused and changes nothing.
"""
import os
import signal
import subprocess
import tempfile
import time

import pytest

from cli_helpers import Daemon, Session, eventually

GIB = 1024**3


@pytest.fixture
def daemon():
    with tempfile.TemporaryDirectory() as tmp:
        d = Daemon(tmp)
        try:
            yield d
        finally:
            d.stop(signal.SIGKILL)


def used(lease):
    return lease["usage"][0]["used_bytes"]


def test_each_named_child_is_its_own_leases_holder(daemon):
    tasks = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        daemon.script([f"0 {tasks[0].pid} 2GiB", f"0 {tasks[1].pid} 5GiB"])
        sessions = [Session(daemon.socket) for _ in tasks]
        for i, (s, t) in enumerate(zip(sessions, tasks)):
            r = s.call(op="try_acquire", job_id=f"task-{i}", bytes=8 * GIB, holder_pid=t.pid)
            assert r["ok"], r
            assert r["lease"]["pid"] == t.pid
        assert eventually(lambda: all(used(l) is not None for l in daemon.leases().values()))
        leases = daemon.leases()
        # Each lease counts its own task only: a lease held by the client itself would count
        # both tasks (its descendants) in each.
        assert used(leases["task-0"]) == 2 * GIB, leases["task-0"]
        assert used(leases["task-1"]) == 5 * GIB, leases["task-1"]
        assert leases["task-0"]["pid"] == tasks[0].pid
        # The lease lives as long as the connection, not as long as the named process.
        tasks[0].kill()
        tasks[0].wait()
        time.sleep(0.3)
        assert "task-0" in daemon.leases()
        sessions[0].close()
        assert eventually(lambda: "task-0" not in daemon.leases())
        assert "task-1" in daemon.leases()
        sessions[1].close()
        assert eventually(lambda: daemon.leases() == {})
    finally:
        for t in tasks:
            t.kill()
            t.wait()


def test_a_pid_that_is_not_the_clients_is_refused_and_changes_nothing(daemon):
    s = Session(daemon.socket)
    dead = subprocess.Popen(["true"])
    dead.wait()
    cases = [(1, "is neither the client"), (os.getppid(), "is neither the client"),
             (dead.pid, "is not a running process")]
    # (A child running as another uid is refused for a client of another uid than root:
    # tests/daemon/process_identity_test.cpp, which can name any client uid.)
    try:
        for pid, why in cases:
            for op in ("try_acquire", "acquire"):
                r = s.call(op=op, job_id="x", bytes=GIB, holder_pid=pid)
                assert not r["ok"], r
                assert r["error"]["code"] == "permission_denied", r
                assert f"holder_pid {pid} " in r["error"]["message"], r
                assert why in r["error"]["message"], r
        bad = s.call(op="try_acquire", job_id="x", bytes=GIB, holder_pid=-5)
        assert bad["error"]["code"] == "invalid_argument", bad
        status = daemon.status()
        assert status["leases"] == [] and status["queue"] == []
        # Naming itself is the same as naming nobody.
        r = s.call(op="try_acquire", job_id="own", bytes=GIB, holder_pid=os.getpid())
        assert r["ok"] and r["lease"]["pid"] == os.getpid(), r
    finally:
        s.close()


def test_a_named_holder_survives_a_restart(daemon):
    task = subprocess.Popen(["sleep", "60"])
    try:
        s = Session(daemon.socket)
        r = s.call(op="try_acquire", job_id="task", bytes=4 * GIB, holder_pid=task.pid)
        assert r["ok"], r
        token = r["lease"]["token"]
        daemon.stop(signal.SIGKILL)
        s.close()
        second = Daemon(daemon.tmp)
        try:
            me = Session(second.socket)
            back = me.call(op="reattach", job_id="task", token=token)
            assert back["ok"], back
            assert back["lease"]["pid"] == task.pid
            assert second.leases()["task"]["pid"] == task.pid
            me.close()
            assert eventually(lambda: second.leases() == {})
        finally:
            second.stop(signal.SIGKILL)
    finally:
        task.kill()
        task.wait()
