"""`gpumgr run` hardened (issue 11): its command does not outlive it, every forwarded signal
reaches the command (and the command's process group), bad timeouts and sizes are refused
with a message that says what is wrong, a command that cannot be run is named with the
reason, and client-chosen text reaches the terminal escaped.

Each test starts its own daemon on a simulated 10 GiB device in a temporary folder. Waits
poll a condition with a deadline. Runs without a terminal start in a new session (as under a
service or CI: no controlling terminal), so that the outcome does not depend on whether
pytest itself was started from one; the terminal case uses a pseudo-terminal of its own.
"""
import errno
import json
import os
import pty
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from cli_helpers import answers, eventually

GPUMGR = os.environ.get("GPUMGR_BIN", "gpumgr")
GIB = 1024**3


class Daemon:
    def __init__(self, tmp, spec="1x10GiB"):
        self.socket = os.path.join(tmp, "gpumgr.sock")
        self.proc = subprocess.Popen(
            [GPUMGR, "serve", "--socket", self.socket, "--no-http", "--simulate", spec,
             "--memory-limit", "1", "--state-dir", os.path.join(tmp, "state")],
            stderr=subprocess.PIPE, text=True)
        assert eventually(lambda: answers(self.socket) or self.proc.poll() is not None)
        assert self.proc.poll() is None, self.proc.stderr.read()

    def status(self):
        out = subprocess.run([GPUMGR, "status", "--json", "--socket", self.socket],
                             capture_output=True, text=True, check=True, timeout=30)
        return json.loads(out.stdout)

    def leases(self):
        return [lease["job_id"] for lease in self.status()["leases"]]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=10)


@pytest.fixture
def tmp():
    with tempfile.TemporaryDirectory() as d:
        yield d


@pytest.fixture
def daemon(tmp):
    d = Daemon(tmp)
    yield d
    assert d.stop() == 0


@pytest.fixture
def strays():
    """Pids to SIGKILL at the end whatever happened, so that a failing test leaves no
    command running behind it."""
    pids = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def children(pid):
    """The pids of `pid`'s children (its main thread forks them)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def alive(pid):
    """Whether `pid` runs: it exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def start_run(d, *cmd, extra=(), **kw):
    """`gpumgr run` in a session of its own: no controlling terminal."""
    return subprocess.Popen([GPUMGR, "run", "--socket", d.socket, "--vram", "1GiB", *extra, "--",
                             *cmd], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kw)


def run(d, *cmd, vram="1GiB", extra=(), socket=None):
    return subprocess.run([GPUMGR, "run", "--socket", socket or d.socket, "--vram", vram, *extra,
                           "--", *cmd], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=30, start_new_session=True)


# --- 2. Children do not outlive their lease ----------------------------------------------


def test_sigkill_of_run_ends_its_command_and_frees_the_lease(daemon, strays):
    p = start_run(daemon, "sleep", "60", extra=("--job-id", "killed"))
    strays.append(p.pid)
    assert eventually(lambda: children(p.pid) != [] and daemon.leases() == ["killed"])
    (child,) = children(p.pid)
    strays.append(child)
    assert read(f"/proc/{child}/comm").strip() == "sleep"
    p.kill()
    p.wait(timeout=10)
    # The kernel ends the command (PR_SET_PDEATHSIG) as soon as `gpumgr run` is gone.
    assert eventually(lambda: not alive(child), timeout=1.0), "the command outlived gpumgr run"
    assert eventually(lambda: daemon.leases() == [])


FORWARDED = ("HUP", "QUIT", "USR1", "USR2", "INT", "TERM")


def trap_script(log, ready):
    """A shell that logs every forwarded signal's name and exits 42 on the last, SIGTERM."""
    traps = " ".join(f"trap 'echo {name} >> {log}' {name};" for name in FORWARDED[:-1])
    return (f"ulimit -c 0; {traps} trap 'echo TERM >> {log}; exit 42' TERM; "
            f"touch {ready}; while :; do sleep 0.02; done")


def test_every_forwarded_signal_reaches_the_command(daemon, tmp, strays):
    log, ready = os.path.join(tmp, "log"), os.path.join(tmp, "ready")
    p = start_run(daemon, "sh", "-c", trap_script(log, ready), extra=("--job-id", "trapped"),
                  cwd=tmp)
    strays.append(p.pid)
    assert eventually(lambda: os.path.exists(ready))
    strays.extend(children(p.pid))
    seen = []
    for name in FORWARDED:
        p.send_signal(getattr(signal, "SIG" + name))
        seen.append(name)
        assert eventually(lambda: read(log).split() == seen), \
            f"after SIG{name}: the command logged {read(log).split()}, run: {p.poll()}"
        if name != "TERM":
            assert p.poll() is None, f"SIG{name} ended gpumgr run itself"
            assert daemon.leases() == ["trapped"]
    assert p.wait(timeout=10) == 42
    assert daemon.leases() == []


def test_forwarded_signals_reach_the_commands_whole_process_group(daemon, tmp, strays):
    log, ready, grand = (os.path.join(tmp, n) for n in ("log", "ready", "grand"))
    # The command starts a worker of its own in the background; SIGTERM to `gpumgr run` must
    # reach both (a service manager's `stop` ends the whole job, not only its first process).
    worker = os.path.join(tmp, "worker.sh")
    with open(worker, "w") as f:
        f.write(f"trap 'echo worker >> {log}; exit 0' TERM; echo $$ > {grand}\n"
                "while :; do sleep 0.02; done\n")
    script = (f"sh {worker} & trap 'exit 42' TERM; "
              f"while [ ! -s {grand} ]; do sleep 0.02; done; touch {ready}; "
              "while :; do sleep 0.02; done")
    p = start_run(daemon, "sh", "-c", script)
    strays.append(p.pid)
    assert eventually(lambda: os.path.exists(ready))
    worker_pid = int(read(grand))
    strays.append(worker_pid)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=10) == 42
    assert eventually(lambda: "worker" in read(log)), "SIGTERM did not reach the command's worker"
    assert eventually(lambda: not alive(worker_pid))
    assert daemon.leases() == []


def test_on_a_terminal_the_command_keeps_the_foreground_and_ctrl_c_reaches_it(daemon, tmp):
    """Started from a terminal, the command stays in the shell's job (the terminal's
    foreground process group): it can read the terminal, and Ctrl-C reaches it."""
    out, ready = os.path.join(tmp, "out"), os.path.join(tmp, "ready")
    script = (f"trap 'echo INT >> {out}; exit 43' INT; touch {ready}; read line; "
              f"echo \"got $line\" >> {out}; while :; do sleep 0.02; done")
    pid, master = pty.fork()
    if pid == 0:  # the child: a session leader whose controlling terminal is the pty
        try:
            os.execv(GPUMGR, [GPUMGR, "run", "--socket", daemon.socket, "--vram", "1GiB",
                              "--job-id", "tty", "--", "sh", "-c", script])
        finally:
            os._exit(99)
    try:
        assert eventually(lambda: os.path.exists(ready))
        os.write(master, b"hello\n")
        assert eventually(lambda: "got hello" in read(out)), \
            "the command could not read its terminal"
        os.write(master, b"\x03")  # Ctrl-C
        deadline = time.monotonic() + 10
        status = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            try:
                os.read(master, 4096)  # keep the terminal drained
            except OSError:
                pass
            time.sleep(0.01)
        assert status is not None and os.WIFEXITED(status), "gpumgr run did not end on Ctrl-C"
        assert os.WEXITSTATUS(status) == 43
        assert read(out).split()[-1] == "INT"
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass
        os.close(master)
    assert eventually(lambda: daemon.leases() == [])


# --- 4. Timeouts that cannot wait forever ------------------------------------------------


@pytest.mark.parametrize("value", ["-5", "-0.1", "nan", "inf", "-inf", "1e10", "1e300"])
def test_a_timeout_that_is_not_a_number_of_seconds_is_refused(daemon, tmp, value):
    ran = os.path.join(tmp, "ran")
    r = run(daemon, "touch", ran, extra=("--timeout", value))
    assert r.returncode == 2, r.stderr
    assert f"--timeout must be a number of seconds from 0 to 1e9, got {value}" in r.stderr
    assert not os.path.exists(ran)
    assert daemon.status()["queue"] == [] and daemon.leases() == []


def test_timeouts_in_range_are_accepted(daemon):
    for value in ("0", "0.5", "1e9"):
        r = run(daemon, "true", extra=("--timeout", value))
        assert r.returncode == 0, (value, r.stderr)


# --- 6. Messages that say what happened --------------------------------------------------


def test_decimal_sizes_are_leased_exactly(daemon):
    for vram, expected in (("1.5GiB", 1610612736), ("0.5MiB", 512 * 1024),
                           ("1.5", 1536 * 1024), ("0.1GiB", 107374182)):
        r = run(daemon, "sh", "-c", 'echo "$GPUMGR_LEASE_BYTES"', vram=vram)
        assert r.returncode == 0, (vram, r.stderr)
        assert int(r.stdout) == expected, vram


def test_sizes_with_an_exponent_are_refused_with_a_reason(daemon):
    r = run(daemon, "true", vram="1e3MiB")
    assert r.returncode == 2
    assert "--vram: bad size '1e3MiB': exponents are not accepted" in r.stderr


def test_a_command_that_cannot_run_is_named_with_the_reason(daemon, tmp):
    plain = os.path.join(tmp, "plain.sh")
    with open(plain, "w") as f:
        f.write("#!/bin/sh\necho never\n")
    os.chmod(plain, 0o644)
    cases = (
        ("/nonexistent/cmd", "cannot run '/nonexistent/cmd': " + os.strerror(errno.ENOENT)),
        ("no-such-command-gpumgr", "cannot run 'no-such-command-gpumgr': not found in PATH"),
        (tmp, f"cannot run '{tmp}': " + os.strerror(errno.EISDIR)),
        (plain, f"cannot run '{plain}': " + os.strerror(errno.EACCES)),
    )
    for cmd, message in cases:
        r = run(daemon, cmd)
        assert r.returncode == 127, (cmd, r.stderr)
        assert message in r.stderr, r.stderr
    assert daemon.leases() == []


def test_client_chosen_text_reaches_the_terminal_escaped(daemon):
    # The daemon refuses the control characters; the message that says so must not carry them.
    r = run(daemon, "true", extra=("--job-id", "evil\x1b]0;owned\x07\x1b[2J"))
    assert r.returncode == 2
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr
    assert "no lease for job 'evil\\x1b]0;owned\\x07\\x1b[2J'" in r.stderr
    # A right-to-left override is a valid job id, shown escaped in the "leased" line.
    r = run(daemon, "true", vram="auto",
            extra=("--kind", "k", "--default-vram", "1GiB", "--job-id", "job\u202egnp.exe"))
    assert r.returncode == 0, r.stderr
    assert "\u202e" not in r.stderr
    assert "job 'job\\u202egnp.exe' leased 1 GiB per GPU" in r.stderr
    # The command that cannot run, too.
    r = run(daemon, "/nonexistent/\x1b[2Jcmd")
    assert r.returncode == 127
    assert "\x1b" not in r.stderr
    assert "cannot run '/nonexistent/\\x1b[2Jcmd'" in r.stderr


# --- 6. A holder is told when someone else ends its lease ---------------------------------

def protocol_session(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(path)
    r, w = s.makefile("r"), s.makefile("w")

    def call(**req):
        w.write(json.dumps(req) + "\n")
        w.flush()
        return json.loads(r.readline())

    assert call(id=0, op="hello", version=1)["ok"]
    return s, r, w, call


def test_the_holder_is_told_at_once_when_root_releases_its_lease(daemon):
    s, r, w, call = protocol_session(daemon.socket)
    assert call(id=1, op="try_acquire", job_id="victim", bytes=GIB)["ok"]
    other, _, ow, ocall = protocol_session(daemon.socket)
    assert ocall(id=1, op="release", job_id="victim")["ok"]  # no token: root may
    event = json.loads(r.readline())  # unasked: nothing was sent on the holder's connection
    assert event == {"id": None, "ok": True, "event": "lease_ended", "job_id": "victim",
                     "reason": "released by root (uid 0, pid %d)" % os.getpid()}
    for f in (r, w, ow):
        f.close()
    s.close()
    other.close()


def test_run_says_who_ended_its_lease_and_exits_non_zero(daemon, tmp):
    ready = os.path.join(tmp, "ready")
    holder = start_run(daemon, "sh", "-c", f"touch {ready}; sleep 2", extra=("--job-id", "mine"))
    assert eventually(lambda: os.path.exists(ready))
    s, r, w, call = protocol_session(daemon.socket)
    assert call(id=1, op="release", job_id="mine")["ok"]
    code = holder.wait(timeout=30)
    err = holder.stderr.read()
    assert code != 0
    assert "lease lost: job 'mine' was released by root (uid 0, pid %d) while this process " \
           "held it" % os.getpid() in err, err
    r.close()
    w.close()
    s.close()
