"""The daemon's configuration file (docs/config.md) through the real `gpumgr serve`.

`--check-config` on good and bad files; a daemon started from a file alone; SIGHUP under
load: leases and waiters stay, a raised memory_limit or max_concurrent_jobs lets a waiter
start, a lowered one revokes no running lease; a bad file on SIGHUP leaves the running
configuration and says why, by file, line and column; a restart-only key keeps its value.
"""
import json
import os
import signal
import subprocess
import tempfile

import pytest

from cli_helpers import answers, eventually

GPUMGR = os.environ.get("GPUMGR_BIN", "gpumgr")


@pytest.fixture
def tmp():
    with tempfile.TemporaryDirectory(prefix="gpumgr-config-") as d:
        yield d


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def check(*args):
    return subprocess.run([GPUMGR, "serve", "--check-config", *args], capture_output=True,
                          text=True, timeout=30)


def test_check_config_accepts_a_good_file(tmp):
    path = write(os.path.join(tmp, "good.toml"), """
[limits]
memory_limit = 0.5
max_concurrent_jobs = 2
[devices]
simulate = "2x24GiB"
poll_interval = 0.1
[http]
listen = false
[overuse]
policy = "terminate"
""")
    r = check("--config", path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{path}: valid\n"


@pytest.mark.parametrize("text,where,message", [
    ("[limits]\nmemory_limit = 0.5\nmax_jobs = 3\n", "3:1",
     "unknown key 'limits.max_jobs'; the keys of [limits] are memory_limit, max_concurrent_jobs"),
    ("[limits]\nmax_concurrent_jobs = \"4\"\n", "2:23",
     "limits.max_concurrent_jobs must be an integer, not a string"),
    ("[limits]\nmemory_limit = 1.5\n", "2:16",
     "limits.memory_limit is invalid: memory_limit must be in (0, 1], got 1.5"),
    ("[clients]\nmax_connections_per_uid = -5\n", "2:27",
     "clients.max_connections_per_uid must be between 0 (no limit) and 100000000, got -5"),
    ("[devices]\nsimulate = \"-24GiB\"\n", "2:12", "devices.simulate is invalid"),
    ("\n\n[devices\n", "3:9", "syntax error"),
    ("[quota.default]\nmax_vram = \"-8GiB\"\n", "2:12", "quota.default.max_vram is invalid"),
    ("[quota.group.no-such-group-here]\nmax_jobs = 1\n", "1:14",
     "unknown group 'no-such-group-here' in [quota.group.no-such-group-here]"),
])
def test_check_config_refuses_a_bad_file_with_line_column_and_why(tmp, text, where, message):
    path = write(os.path.join(tmp, "bad.toml"), text)
    r = check("--config", path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout == ""
    assert f"gpumgr serve: {path}:{where}: " in r.stderr, r.stderr
    assert message in r.stderr, r.stderr


def test_check_config_without_the_given_file_is_an_error(tmp):
    r = check("--config", os.path.join(tmp, "absent.toml"))
    assert r.returncode == 2
    assert "cannot read the configuration file" in r.stderr
    assert "absent.toml: No such file or directory" in r.stderr


def test_check_config_checks_the_flags_over_the_file(tmp):
    path = write(os.path.join(tmp, "good.toml"), "[limits]\nmax_concurrent_jobs = 2\n")
    r = check("--config", path, "--poll-interval", "0")
    assert r.returncode == 2
    assert "--poll-interval must be between 0.001 and 3600 seconds, got 0" in r.stderr


def same_grants(a, b):
    """The same jobs with the same grants: their grant times agree (the wall-clock figure of
    a steady-clock time moves by microseconds between snapshots; a new grant is later by the
    time the test took)."""
    return a.keys() == b.keys() and all(abs(a[j] - b[j]) < 0.05 for j in a)


class Daemon:
    """A daemon started from a configuration file; its log in tmp/daemon.log."""

    def __init__(self, tmp, text, *extra):
        self.tmp = tmp
        self.sock = os.path.join(tmp, "gpumgr.sock")
        self.config = write(os.path.join(tmp, "gpumgr.toml"), text.format(tmp=tmp))
        self.log_path = os.path.join(tmp, "daemon.log")
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen([GPUMGR, "serve", "--config", self.config, *extra],
                                     stderr=log)
        log.close()
        self.jobs = []
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
        """Job id -> its grant time."""
        return {l["job_id"]: l["granted_at"] for l in self.snapshot()["leases"]}

    def queue(self):
        return [w["job_id"] for w in self.snapshot()["queue"]]

    def run(self, job, vram):
        p = subprocess.Popen([GPUMGR, "run", "--socket", self.sock, "--job-id", job, "--vram",
                              vram, "--", "sleep", "120"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.jobs.append(p)
        return p

    def reload(self, text):
        """Writes the file, sends SIGHUP and waits for the daemon to say what it did."""
        before = self.log().count("gpumgr serve: reloaded ")
        write(self.config, text.format(tmp=self.tmp))
        self.proc.send_signal(signal.SIGHUP)
        assert eventually(lambda: self.log().count("gpumgr serve: reloaded ") > before), self.log()
        assert self.proc.poll() is None, self.log()
        return self.log()

    def stop(self):
        for p in self.jobs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.jobs:
            p.wait(timeout=15)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=15)


BASE = """
[daemon]
socket = "{tmp}/gpumgr.sock"
state_dir = "{tmp}/state"
[http]
listen = false
[devices]
simulate = "20GiB"
poll_interval = 0.05
[limits]
memory_limit = %(memory_limit)s
max_concurrent_jobs = %(max_jobs)d
"""


def conf(memory_limit, max_jobs, extra=""):
    return BASE % {"memory_limit": memory_limit, "max_jobs": max_jobs} + extra


@pytest.fixture
def daemon_factory(tmp):
    started = []

    def start(text, *extra):
        d = Daemon(tmp, text, *extra)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def test_a_daemon_runs_from_the_file_alone_and_flags_override_it(daemon_factory):
    d = daemon_factory(conf(0.5, 2), "--max-concurrent-jobs", "4")
    config = d.snapshot()["config"]
    assert config["memory_limit"] == 0.5            # from the file
    assert config["max_concurrent_jobs"] == 4       # the flag over the file's 2
    assert config["poll_interval_ms"] == 50         # from the file
    assert d.snapshot()["devices"][0]["capacity_bytes"] == 10 * 1024**3
    assert f"configuration from {d.config}" in d.log()


def test_sighup_under_load_keeps_leases_and_waiters_and_applies_new_limits(daemon_factory):
    gib = 1024**3
    d = daemon_factory(conf(0.5, 1))  # 10 GiB of 20, one job at a time
    d.run("a", "4GiB")
    assert eventually(lambda: "a" in d.leases())
    d.run("b", "4GiB")
    assert eventually(lambda: d.queue() == ["b"])
    granted_a = d.leases()["a"]

    # A raised job limit: b starts; a keeps its lease (the same grant).
    d.reload(conf(0.5, 3))
    assert eventually(lambda: "b" in d.leases())
    assert same_grants({"a": d.leases()["a"]}, {"a": granted_a})
    assert d.snapshot()["config"]["max_concurrent_jobs"] == 3

    # c needs 6 GiB: 8 of 10 GiB are leased, so it waits for memory, not for a slot.
    d.run("c", "6GiB")
    assert eventually(lambda: d.queue() == ["c"])
    # A raised memory limit (18 GiB): c starts.
    d.reload(conf(0.9, 3))
    assert eventually(lambda: "c" in d.leases())
    assert d.snapshot()["devices"][0]["capacity_bytes"] == int(20 * gib * 0.9)
    held = d.leases()
    assert set(held) == {"a", "b", "c"}

    # Lowered below what is held, in both limits: no lease is revoked; a new job waits.
    d.reload(conf(0.2, 1))
    d.run("d", "1GiB")
    assert eventually(lambda: d.queue() == ["d"])
    assert same_grants(d.leases(), held)
    assert all(p.poll() is None for p in d.jobs), "a holder or waiter was ended by the reload"
    snap = d.snapshot()
    assert snap["config"]["max_concurrent_jobs"] == 1
    assert snap["config"]["memory_limit"] == 0.2
    assert "limits.memory_limit: 0.9 -> 0.2; limits.max_concurrent_jobs: 3 -> 1" in d.log()


def test_a_bad_file_on_sighup_leaves_the_running_configuration_and_says_why(daemon_factory):
    d = daemon_factory(conf(0.5, 1))
    d.run("a", "4GiB")
    assert eventually(lambda: "a" in d.leases())
    d.run("b", "4GiB")
    assert eventually(lambda: d.queue() == ["b"])
    leases = d.leases()

    # A raised job limit in a file with an unknown key: refused as a whole, b keeps waiting.
    bad = conf(0.5, 3, extra="poll_intervall = 1\n")
    write(d.config, bad.format(tmp=d.tmp))
    d.proc.send_signal(signal.SIGHUP)
    assert eventually(lambda: "reload refused" in d.log()), d.log()
    line = [l for l in d.log().splitlines() if "reload refused" in l][0]
    assert f"{d.config}:13:1: unknown key 'limits.poll_intervall'" in line, line
    assert "the running configuration stays" in line
    assert d.proc.poll() is None
    assert d.snapshot()["config"]["max_concurrent_jobs"] == 1
    assert d.queue() == ["b"]
    assert same_grants(d.leases(), leases)

    # A syntax error, then a value out of range: refused the same way.
    write(d.config, "[limits\n")
    d.proc.send_signal(signal.SIGHUP)
    assert eventually(lambda: d.log().count("reload refused") == 2), d.log()
    assert f"{d.config}:1:8: syntax error" in d.log()
    write(d.config, conf(1.5, 3).format(tmp=d.tmp))
    d.proc.send_signal(signal.SIGHUP)
    assert eventually(lambda: d.log().count("reload refused") == 3), d.log()
    assert f"{d.config}:11:16: limits.memory_limit is invalid" in d.log()
    assert d.snapshot()["config"]["memory_limit"] == 0.5
    assert d.queue() == ["b"]

    # A file removed after the start (it was given with --config): refused too.
    os.unlink(d.config)
    d.proc.send_signal(signal.SIGHUP)
    assert eventually(lambda: d.log().count("reload refused") == 4), d.log()
    assert "No such file or directory" in d.log()

    # Then a good one applies.
    d.reload(conf(0.5, 2))
    assert eventually(lambda: "b" in d.leases())
    assert same_grants({"a": d.leases()["a"]}, {"a": leases["a"]})


def test_a_restart_only_key_keeps_its_value_and_the_log_says_so(daemon_factory, tmp):
    d = daemon_factory(conf(0.5, 1))
    moved = conf(0.5, 2).replace("gpumgr.sock", "other.sock").replace("20GiB", "40GiB")
    log = d.reload(moved)
    assert ("daemon.socket changed ('" + tmp + "/gpumgr.sock' -> '" + tmp + "/other.sock') but "
            "takes effect only at a restart; keeping '" + tmp + "/gpumgr.sock'") in log
    assert "devices.simulate changed ('20GiB' -> '40GiB') but takes effect only at a restart" in log
    # The reloadable key in the same file applied; the daemon still serves the old socket.
    assert "limits.max_concurrent_jobs: 1 -> 2" in log
    assert d.snapshot()["config"]["max_concurrent_jobs"] == 2
    assert d.snapshot()["devices"][0]["total_bytes"] == 20 * 1024**3
    assert not os.path.exists(os.path.join(tmp, "other.sock"))


def test_a_reloaded_hello_timeout_applies_to_new_connections(daemon_factory):
    import socket as sk
    d = daemon_factory(conf(0.5, 1, extra="[clients]\nhello_timeout = 0\n"))

    def idle_connection():
        s = sk.socket(sk.AF_UNIX, sk.SOCK_STREAM)
        s.settimeout(20)
        s.connect(d.sock)
        return s

    # No limit: a connection that says nothing is kept (the daemon answers nothing).
    before = idle_connection()
    before.settimeout(0.5)
    with pytest.raises(sk.timeout):
        before.recv(4096)
    d.reload(conf(0.5, 1, extra="[clients]\nhello_timeout = 0.2\n"))
    assert "clients.hello_timeout: 0 -> 0.2" in d.log()
    # A new connection that says nothing is told why and closed.
    after = idle_connection()
    data = b""
    while True:
        chunk = after.recv(4096)
        if not chunk:
            break
        data += chunk
    reply = json.loads(data.decode().splitlines()[0])
    assert reply["ok"] is False
    assert reply["error"]["code"] == "timed_out", reply
    assert "no hello within 0.2 s" in reply["error"]["message"]
    before.close()
    after.close()


QUOTA = """[quota.default]
max_vram = "%s"
max_priority = 5
"""


def run_now(d, job, vram, *extra):
    """`gpumgr run` of `true`, to its end: (exit code, stderr)."""
    r = subprocess.run([GPUMGR, "run", "--socket", d.sock, "--job-id", job, "--vram", vram,
                        "--timeout", "20", *extra, "--", "true"], capture_output=True, text=True,
                       timeout=30)
    return r.returncode, r.stderr


def test_a_request_that_can_never_fit_its_quota_is_refused_at_once(daemon_factory):
    d = daemon_factory(conf(0.8, 4, extra=QUOTA % "8GiB"))  # 16 GiB of capacity
    uid = os.getuid()
    # Within the quota: runs.
    assert run_now(d, "small", "8GiB") == (0, "")
    # 9 GiB fits the host but never the quota: refused at once, not queued.
    code, err = run_now(d, "big", "9GiB")
    assert code == 1, err
    assert "quota_exceeded" in err or "can never fit the quota" in err, err
    assert (f"the request for 9 GiB can never fit the quota of uid {uid}: at most 8 GiB "
            "leased at once (quota.default.max_vram)") in err
    # A priority above max_priority: refused the same way.
    code, err = run_now(d, "urgent", "1GiB", "--priority", "6")
    assert code == 1, err
    assert f"priority 6 is above the highest that uid {uid} may ask for, 5" in err, err
    assert d.queue() == [] and d.leases() == {}

    # A share of the host, reloaded: 75% of 16 GiB is 12 GiB, so 9 GiB fits now.
    log = d.reload(conf(0.8, 4, extra=QUOTA % "75%"))
    assert "quotas: 0 user, 0 group table(s) and a default" in log
    assert run_now(d, "big", "9GiB") == (0, "")
    code, err = run_now(d, "bigger", "13GiB")
    assert code == 1 and "75% of the host's 16 GiB, 12 GiB" in err, err


def test_an_unknown_user_in_a_quota_is_refused_by_name(tmp):
    path = write(os.path.join(tmp, "q.toml"), "[quota.user.nobody-here-at-all]\nmax_jobs = 1\n")
    r = check("--config", path)
    assert r.returncode == 2
    assert (f"{path}:1:13: unknown user 'nobody-here-at-all' in [quota.user.nobody-here-at-all]: "
            "no such user on this host") in r.stderr, r.stderr
