#!/usr/bin/env python3
"""The reliability suite: what an attacker or an unlucky operator does to a daemon, with
figures. Each experiment starts its own `gpumgr serve` on simulated devices in a temporary
folder, does its damage, checks that nothing leaked (no lease, no waiter, no byte, no orphaned
command) and that the daemon still serves, and prints one line of figures.

    tests/reliability/reliability.py [--gpumgr PATH] [--long] [--only NAME ...]

CTest runs it (label `reliability`) at a scale that fits CI; `--long` is the soak: 10,000
kill -9 rounds, 20,000 idle connections, 100 daemon restarts. Exit 0 when every experiment passes.
Only loopback and Unix sockets in the test's own folder are used; every loop is bounded.
"""
import argparse
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time

GIB = 1024**3


def eventually(cond, timeout=20.0, step=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def percentile(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(q * len(values) + 0.5)) - 1))]


class Daemon:
    def __init__(self, gpumgr, tmp, spec="2x24GiB", extra=()):
        self.gpumgr = gpumgr
        self.socket = os.path.join(tmp, "gpumgr.sock")
        self.log = open(os.path.join(tmp, "serve.log"), "a")
        self.args = [gpumgr, "serve", "--socket", self.socket, "--no-http", "--simulate", spec,
                     "--state-dir", os.path.join(tmp, "state"), "--poll-interval", "0.05",
                     "--max-concurrent-jobs", "64", "--quiet", *extra]
        self.start()

    def start(self):
        self.proc = subprocess.Popen(self.args, stderr=self.log)
        if not eventually(lambda: os.path.exists(self.socket) or self.proc.poll() is not None):
            raise RuntimeError("gpumgr serve did not start")
        if self.proc.poll() is not None:
            raise RuntimeError("gpumgr serve exited at once")

    def restart(self, sig):
        """Stops the daemon with `sig` and starts the next one on the same socket and state
        directory; returns the milliseconds from the signal to the new one answering."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self.start()
        if not eventually(lambda: answers(self.socket), timeout=20, step=0.001):
            raise RuntimeError("the restarted daemon does not answer")
        return (time.monotonic() - t0) * 1000

    def status(self):
        out = subprocess.run([self.gpumgr, "status", "--json", "--socket", self.socket],
                             capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError("status failed: " + out.stderr)
        return json.loads(out.stdout)

    def idle(self):
        s = self.status()
        return not s["leases"] and not s["queue"] and all(
            d["leased_bytes"] == 0 for d in s["devices"])

    def run(self, *cmd, vram="1GiB", extra=()):
        return subprocess.Popen([self.gpumgr, "run", "--socket", self.socket, "--vram", vram,
                                 *extra, "--", *cmd],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self.log.close()
        return code


def answers(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def processes_with(marker):
    """Pids whose command line contains `marker` (the commands a killed run started)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def kill9_rounds(gpumgr, tmp, rounds, rng):
    """SIGKILL of `gpumgr run` at random moments: before, during and after its grant."""
    d = Daemon(gpumgr, tmp)
    # The command is sleep itself, with a duration no other process here uses: its command
    # line is the marker.
    marker = f"{3000 + os.getpid() % 1000}.{rng.randint(100, 999)}"
    free_ms = []
    granted_rounds = 0
    for i in range(rounds):
        r = d.run("sleep", marker)
        time.sleep(rng.uniform(0, 0.03))
        had_lease = bool(d.status()["leases"]) if i % 10 == 0 else None
        r.kill()
        killed = time.monotonic()
        r.wait()
        if had_lease:
            granted_rounds += 1
            if not eventually(lambda: not d.status()["leases"], timeout=10, step=0.001):
                raise AssertionError(f"round {i}: the lease of a killed run was not freed")
            free_ms.append((time.monotonic() - killed) * 1000)
    ok = eventually(d.idle, timeout=20)
    orphans_gone = eventually(lambda: not processes_with(marker), timeout=10)
    leftover = processes_with(marker)
    for pid in leftover:
        os.kill(pid, signal.SIGKILL)
    code = d.stop()
    print(f"kill9: {rounds} rounds of SIGKILL at random moments: leaked leases "
          f"{0 if ok else 'SOME'}, orphaned commands {len(leftover)}; kill-to-free "
          f"p50 {percentile(free_ms, 0.5):.1f} ms, p99 {percentile(free_ms, 0.99):.1f} ms "
          f"over {granted_rounds} sampled granted rounds; daemon exit {code}")
    return ok and orphans_gone and code == 0


def killed_batches(gpumgr, tmp, batches, size, rng):
    """Batches of concurrent runs, most of them waiting, all killed at once."""
    d = Daemon(gpumgr, tmp)
    for _ in range(batches):
        runs = [d.run("sleep", "30", vram="10GiB") for _ in range(size)]
        time.sleep(rng.uniform(0.05, 0.3))
        for r in runs:
            r.kill()
        for r in runs:
            r.wait()
    ok = eventually(d.idle, timeout=30)
    code = d.stop()
    print(f"batches: {batches} batches of {size} killed runs (10 GiB each on 2x24GiB): "
          f"leaked {0 if ok else 'SOME'}; daemon exit {code}")
    return ok and code == 0


def restarts(gpumgr, tmp, rounds, rng):
    """The daemon restarted (SIGKILL or SIGTERM, at random moments) under holders and waiters:
    every `gpumgr run` reattaches by itself, its command runs exactly once and to the end, and
    it exits 0; nothing is leaked."""
    d = Daemon(gpumgr, tmp)
    total = succeeded = once = 0
    restart_ms = []
    kills = {"SIGKILL": 0, "SIGTERM": 0}
    for i in range(rounds):
        runs = []
        # 6 runs of 8 GiB on 2 x 19.2 GiB: 4 hold, 2 wait for them.
        for k in range(6):
            mark = os.path.join(tmp, f"ran-{i}-{k}")
            runs.append((mark, d.run("sh", "-c", f"echo x >> {mark}; sleep {rng.uniform(0.2, 1.5):.2f}",
                                     vram="8GiB", extra=("--job-id", f"r{i}-{k}"))))
        # Every run holds or waits (the daemon knows all six), then the restart comes at a
        # random moment among their grants and releases.
        if not eventually(lambda: len(d.status()["leases"]) + len(d.status()["queue"]) == 6,
                          timeout=20):
            raise AssertionError(f"round {i}: the six runs did not reach the daemon")
        time.sleep(rng.uniform(0, 1.0))
        sig = rng.choice([signal.SIGKILL, signal.SIGTERM])
        kills[sig.name] += 1
        restart_ms.append(d.restart(sig))
        for mark, r in runs:
            total += 1
            succeeded += r.wait(timeout=120) == 0
            try:
                with open(mark) as f:
                    once += f.read() == "x\n"
            except OSError:
                pass
    ok = eventually(d.idle, timeout=20)
    code = d.stop()
    print(f"restarts: {rounds} daemon restarts (SIGKILL {kills['SIGKILL']}, SIGTERM "
          f"{kills['SIGTERM']}) under 4 holders and 2 waiters each: runs exited 0 {succeeded} "
          f"of {total}, commands ran exactly once {once} of {total}, leaked "
          f"{0 if ok else 'SOME'}; signal to new daemon answering p50 "
          f"{percentile(restart_ms, 0.5):.0f} ms, max {max(restart_ms):.0f} ms; daemon exit {code}")
    return ok and code == 0 and succeeded == total and once == total


def idle_connections(gpumgr, tmp, count):
    """Connections that never say hello: closed at the hello timeout, while an established
    client is served all along."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 1024)), hard))
    d = Daemon(gpumgr, tmp, extra=("--hello-timeout", "3"))
    conns = []
    opened_at = time.monotonic()
    for _ in range(count):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            c.connect(d.socket)
        except OSError:
            c.close()
            break
        conns.append(c)
    rss = d.rss_kib()
    worst = 0.0
    for _ in range(10):  # an established client, meanwhile
        start = time.monotonic()
        d.status()
        worst = max(worst, time.monotonic() - start)
    closed = 0
    for c in conns:
        c.settimeout(max(0.1, opened_at + 3 + 10 - time.monotonic()))
        try:
            data = c.recv(4096)
            while data and not data.endswith(b"\n"):
                data += c.recv(4096)
            if c.recv(4096) == b"":
                closed += 1
        except OSError:
            pass
        c.close()
    code = d.stop()
    print(f"idle: {len(conns)} connections without hello: status answered in at most "
          f"{worst * 1000:.0f} ms meanwhile; daemon RSS {rss // 1024} MiB; {closed} closed by "
          f"the daemon at the hello timeout (3 s); daemon exit {code}")
    return len(conns) == count and closed == len(conns) and worst < 2.0 and code == 0


def malformed_messages(gpumgr, tmp, count, rng):
    """Garbage over the protocol: every connection gets an error or is closed; the daemon
    keeps serving and leaks nothing."""
    d = Daemon(gpumgr, tmp)
    samples = [b"{", b"null", b"[]", b'{"id":1}', b'{"id":-1,"op":"hello"}',
               b'{"id":1,"op":"acquire","job_id":"x","bytes":1}',
               b'{"id":1,"op":"hello","version":1}\n{"id":2,"op":"acquire","bytes":"1"}',
               b'{"id":1,"op":"hello","version":1}\n{"id":2,"op":"release","job_id":""}',
               b"\xff\xfe\x00", b"x" * 70000]
    for i in range(count):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.settimeout(5)
        c.connect(d.socket)
        payload = rng.choice(samples) if i % 3 else bytes(rng.getrandbits(8)
                                                          for _ in range(rng.randint(1, 200)))
        try:
            c.sendall(payload + b"\n")
            c.recv(65536)
        except OSError:
            pass
        c.close()
    ok = eventually(d.idle, timeout=10)
    served = d.status()["devices"] != []
    code = d.stop()
    print(f"malformed: {count} connections of garbage: daemon kept serving {served}, "
          f"leaked {0 if ok else 'SOME'}; daemon exit {code}")
    return ok and served and code == 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpumgr", default=os.environ.get("GPUMGR_BIN", "gpumgr"))
    parser.add_argument("--long", action="store_true", help="the soak scale")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    scale = {"kill9": 10000 if args.long else 200, "batches": 20 if args.long else 4,
             "idle": 20000 if args.long else 2000, "malformed": 5000 if args.long else 300,
             "restarts": 100 if args.long else 6}
    experiments = {
        "kill9": lambda tmp: kill9_rounds(args.gpumgr, tmp, scale["kill9"], rng),
        "batches": lambda tmp: killed_batches(args.gpumgr, tmp, scale["batches"], 50, rng),
        "idle": lambda tmp: idle_connections(args.gpumgr, tmp, scale["idle"]),
        "malformed": lambda tmp: malformed_messages(args.gpumgr, tmp, scale["malformed"], rng),
        "restarts": lambda tmp: restarts(args.gpumgr, tmp, scale["restarts"], rng),
    }
    passed = failed = 0
    for name, experiment in experiments.items():
        if args.only and name not in args.only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            start = time.monotonic()
            try:
                ok = experiment(tmp)
            except Exception as e:  # noqa: BLE001 - reported as a failure with its reason
                print(f"{name}: FAILED: {e!r}")
                ok = False
            print(f"{name}: {'passed' if ok else 'FAILED'} in {time.monotonic() - start:.1f} s")
            passed, failed = passed + ok, failed + (not ok)
    print(f"reliability: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
