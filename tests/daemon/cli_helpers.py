"""Helpers shared by the daemon's pytest files: waiting on a condition with a deadline,
whether a Unix socket accepts connections, a raw protocol connection, and a `gpumgr serve`
on simulated devices whose processes' use a file scripts."""
import json
import os
import signal
import socket
import subprocess
import time

GPUMGR = os.environ.get("GPUMGR_BIN", "gpumgr")


def eventually(cond, timeout=10.0):
    """Polls cond() until it holds or `timeout` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def answers(path):
    """Whether something accepts connections on the Unix socket at `path`."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class Session:
    """One raw protocol connection (docs/protocol.md), for what the CLI does not show."""

    def __init__(self, sock):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(20)
        self.s.connect(sock)
        # One file to read and one to write: a text file opened "rw" drops the lines it has
        # read ahead whenever it is written to.
        self.r = self.s.makefile("r")
        self.w = self.s.makefile("w")
        self.next_id = 1
        self.replies = {}
        assert self.call(op="hello", version=1)["ok"]

    def send(self, **req):
        rid = self.next_id
        self.next_id += 1
        self.w.write(json.dumps({"id": rid, **req}) + "\n")
        self.w.flush()
        return rid

    def reply(self, rid):
        while rid not in self.replies:
            line = self.r.readline()
            assert line, "the daemon closed the connection"
            r = json.loads(line)
            self.replies[r["id"]] = r
        return self.replies.pop(rid)

    def call(self, **req):
        return self.reply(self.send(**req))

    def next_reply(self):
        """The next reply to arrive, whichever request it answers."""
        if self.replies:
            rid = next(iter(self.replies))
            return self.replies.pop(rid)
        line = self.r.readline()
        assert line, "the daemon closed the connection"
        return json.loads(line)

    def close(self):
        self.r.close()  # the socket's descriptor stays open while its file objects do
        self.w.close()
        self.s.close()


class Daemon:
    """`gpumgr serve` in `tmp` on simulated devices (`spec`), polling every 0.05 s, its log in
    a file of its own; `script()` sets what processes use (lines DEVICE PID SIZE)."""

    def __init__(self, tmp, spec="1x24GiB", extra=()):
        self.tmp = tmp
        self.socket = os.path.join(tmp, "gpumgr.sock")
        self.state = os.path.join(tmp, "state")
        self.procs = os.path.join(tmp, "processes.txt")
        self.log = os.path.join(tmp, f"serve-{time.monotonic_ns()}.log")
        if not os.path.exists(self.procs):
            open(self.procs, "w").close()
        env = dict(os.environ, GPUMGR_SIMULATE_PROCESSES=self.procs)
        env.pop("GPUMGR_SOCKET", None)
        self.proc = subprocess.Popen(
            [GPUMGR, "serve", "--socket", self.socket, "--no-http", "--simulate", spec,
             "--state-dir", self.state, "--poll-interval", "0.05", *extra],
            stderr=open(self.log, "w"), env=env)
        assert eventually(lambda: answers(self.socket) or self.proc.poll() is not None)
        assert self.proc.poll() is None, self.stderr()

    def stderr(self):
        with open(self.log) as f:
            return f.read()

    def status(self):
        out = subprocess.run([GPUMGR, "status", "--json", "--socket", self.socket],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    def leases(self):
        return {l["job_id"]: l for l in self.status()["leases"]}

    def lease(self, job):
        for lease in self.status()["leases"]:
            if lease["job_id"] == job:
                return lease
        return None

    def script(self, lines):
        """Replaces the processes file atomically (the daemon may read it at any moment)."""
        tmp = self.procs + ".new"
        with open(tmp, "w") as f:
            f.write("".join(line + "\n" for line in lines))
        os.replace(tmp, self.procs)

    def run(self, *cmd, vram="4GiB", extra=(), **kw):
        return subprocess.Popen([GPUMGR, "run", "--socket", self.socket, "--vram", vram, *extra,
                                 "--", *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, **kw)

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=15)
