"""Quotas between two real users through the real `gpumgr serve` (docs/config.md, Quotas).

Two users, created here with useradd (root only: skipped with the reason elsewhere), share a
daemon through its socket group. User A at its max_vram waits while user B starts at once;
A's waiter starts when A's own lease ends; a reload under load (SIGHUP) leaves every lease
and waiter as it was; status --json shows each user's use against its quota.
"""
import json
import os
import shutil
import signal
import subprocess
import tempfile

import pytest

from cli_helpers import answers, eventually

GPUMGR = os.environ.get("GPUMGR_BIN", "gpumgr")
GROUP = "gpumgr-qtest"
USER_A = "gpumgr-qa"
USER_B = "gpumgr-qb"
GIB = 1024**3


def _run(*cmd):
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def users():
    if os.geteuid() != 0:
        pytest.skip("needs root: the test creates two users with useradd")
    for tool in ("useradd", "groupadd", "userdel", "groupdel"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} to create the test's users")
    created = []
    if _run("getent", "group", GROUP).returncode != 0:
        r = _run("groupadd", GROUP)
        assert r.returncode == 0, r.stderr
        created.append(("groupdel", GROUP))
    uids = {}
    for name in (USER_A, USER_B):
        if _run("getent", "passwd", name).returncode != 0:
            r = _run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "-G", GROUP,
                     name)
            assert r.returncode == 0, r.stderr
            created.insert(0, ("userdel", name))
        else:
            _run("usermod", "-a", "-G", GROUP, name)
        uids[name] = int(_run("id", "-u", name).stdout)
    yield uids
    for tool, name in created:
        _run(tool, name)


@pytest.fixture
def tmp():
    with tempfile.TemporaryDirectory(prefix="gpumgr-quota-") as d:
        # The socket's folder: root's and not writable by others (the clients check it), but
        # open to the two users on their way to the socket.
        os.chmod(d, 0o755)
        yield d


CONFIG = """
[daemon]
socket = "{tmp}/gpumgr.sock"
socket_group = "%(group)s"
state_dir = "{tmp}/state"
[http]
listen = false
[devices]
simulate = "20GiB"
poll_interval = 0.05
[limits]
memory_limit = 1.0
max_concurrent_jobs = %(max_jobs)d
[quota.user.%(a)s]
max_vram = "4GiB"
"""


def conf(max_jobs):
    return CONFIG % {"group": GROUP, "a": USER_A, "max_jobs": max_jobs}


class Daemon:
    def __init__(self, tmp, text):
        self.tmp = tmp
        self.sock = os.path.join(tmp, "gpumgr.sock")
        self.config = os.path.join(tmp, "gpumgr.toml")
        with open(self.config, "w") as f:
            f.write(text.format(tmp=tmp))
        self.log_path = os.path.join(tmp, "daemon.log")
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([GPUMGR, "serve", "--config", self.config], stderr=log)
        self.jobs = {}
        assert eventually(lambda: answers(self.sock) or self.proc.poll() is not None)
        assert self.proc.poll() is None, self.log()

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def snapshot(self):
        out = subprocess.run([GPUMGR, "status", "--json", "--socket", self.sock],
                             capture_output=True, text=True, check=True, timeout=30)
        return json.loads(out.stdout)

    def leases(self):
        """Job id -> (uid, grant time)."""
        return {l["job_id"]: (l["uid"], l["granted_at"]) for l in self.snapshot()["leases"]}

    def queue(self):
        return [w["job_id"] for w in self.snapshot()["queue"]]

    def run_as(self, user, job, vram):
        """`gpumgr run` as `user` (with the socket's group), holding its lease until killed."""
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C"}
        p = subprocess.Popen([GPUMGR, "run", "--socket", self.sock, "--job-id", job, "--vram",
                              vram, "--", "sleep", "300"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True,
                             user=user, group=user, extra_groups=[GROUP], env=env, cwd="/")
        self.jobs[job] = p
        return p

    def end(self, job):
        p = self.jobs[job]
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=15)

    def reload(self, text):
        before = self.log().count("gpumgr serve: reloaded ")
        with open(self.config, "w") as f:
            f.write(text.format(tmp=self.tmp))
        self.proc.send_signal(signal.SIGHUP)
        assert eventually(lambda: self.log().count("gpumgr serve: reloaded ") > before), self.log()
        assert self.proc.poll() is None, self.log()

    def stop(self):
        for p in self.jobs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.jobs.values():
            p.wait(timeout=15)
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=15)


@pytest.fixture
def daemon(users, tmp):
    d = Daemon(tmp, conf(8))
    yield d
    assert d.stop() == 0, d.log()


def same_grants(a, b):
    """The same jobs, holders and grants (a grant's wall-clock figure moves by microseconds
    between snapshots)."""
    return a.keys() == b.keys() and all(
        a[j][0] == b[j][0] and abs(a[j][1] - b[j][1]) < 0.05 for j in a)


def user_row(snapshot, uid):
    rows = [u for u in snapshot["users"] if u["uid"] == uid]
    assert len(rows) == 1, snapshot["users"]
    return rows[0]


def test_a_user_at_its_quota_waits_while_another_starts_and_starts_when_its_own_lease_ends(
        daemon, users):
    uid_a, uid_b = users[USER_A], users[USER_B]
    daemon.run_as(USER_A, "a1", "4GiB")
    assert eventually(lambda: "a1" in daemon.leases()), daemon.log()
    assert daemon.leases()["a1"][0] == uid_a

    # 2 GiB more would fit the device (16 GiB free) but not A's 4 GiB quota: it waits.
    daemon.run_as(USER_A, "a2", "2GiB")
    assert eventually(lambda: daemon.queue() == ["a2"]), daemon.log()
    snap = daemon.snapshot()
    assert "holds 4 GiB of its 4 GiB" in snap["queue"][0]["quota_wait"], snap["queue"]
    a = user_row(snap, uid_a)
    assert (a["leased_bytes"], a["max_vram_bytes"], a["jobs"], a["waiting"]) == (
        4 * GIB, 4 * GIB, 1, 1)

    # B, behind A in the queue, starts at once: A's waiter holds nobody up.
    daemon.run_as(USER_B, "b1", "6GiB")
    assert eventually(lambda: "b1" in daemon.leases()), daemon.log()
    assert daemon.queue() == ["a2"]
    b = user_row(daemon.snapshot(), uid_b)
    assert (b["leased_bytes"], b["max_vram_bytes"], b["jobs"]) == (6 * GIB, None, 1)
    assert b["fair_share_gib_s"] >= 0

    # B's lease ending does not let A's waiter start; A's own does.
    daemon.end("b1")
    assert eventually(lambda: "b1" not in daemon.leases())
    assert daemon.queue() == ["a2"]
    daemon.end("a1")
    assert eventually(lambda: "a2" in daemon.leases()), daemon.log()
    assert daemon.queue() == []
    assert daemon.leases()["a2"][0] == uid_a
    assert daemon.jobs["a2"].poll() is None


def test_a_reload_under_load_leaves_leases_and_waiters_untouched(daemon, users):
    daemon.run_as(USER_A, "a1", "4GiB")
    assert eventually(lambda: "a1" in daemon.leases()), daemon.log()
    daemon.run_as(USER_A, "a2", "1GiB")
    assert eventually(lambda: daemon.queue() == ["a2"]), daemon.log()
    daemon.run_as(USER_B, "b1", "6GiB")
    assert eventually(lambda: "b1" in daemon.leases()), daemon.log()
    leases, queue = daemon.leases(), daemon.queue()

    # A reload that changes a limit, with the same quotas: nothing moves.
    daemon.reload(conf(6))
    assert "limits.max_concurrent_jobs: 8 -> 6" in daemon.log()
    assert same_grants(daemon.leases(), leases)
    assert daemon.queue() == queue == ["a2"]
    assert all(p.poll() is None for p in daemon.jobs.values()), "a reload ended a job"
    # The quota still holds after the reload: A's waiter starts only when A's lease ends.
    daemon.end("b1")
    assert eventually(lambda: "b1" not in daemon.leases())
    assert daemon.queue() == ["a2"]
    daemon.end("a1")
    assert eventually(lambda: "a2" in daemon.leases()), daemon.log()
