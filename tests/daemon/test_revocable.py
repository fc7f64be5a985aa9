"""Revocable leases through the real daemon (docs/scheduling.md, "Revocable leases"): a
preemptible `gpumgr run` is told when a waiter of higher priority needs its memory, its
command gets the preempt signal, and once it exits the waiter starts; a command that ignores
the signal is killed at the grace's end, with its `gpumgr run`, and nothing is left behind:
no lease, no process. Status shows the lease being revoked and the counters.

Each test starts its own daemon on a simulated 10 GiB device in a temporary folder; every
wait polls a condition with a deadline.
"""
import json
import os
import signal
import subprocess
import tempfile
import time

import pytest

from cli_helpers import answers, eventually

GPUMGR = os.environ.get("GPUMGR_BIN", "gpumgr")


class Daemon:
    def __init__(self, tmp, *extra):
        self.socket = os.path.join(tmp, "gpumgr.sock")
        self.proc = subprocess.Popen(
            [GPUMGR, "serve", "--socket", self.socket, "--no-http", "--simulate", "1x10GiB",
             "--memory-limit", "1", "--state-dir", os.path.join(tmp, "state"), *extra],
            stderr=subprocess.PIPE, text=True)
        assert eventually(lambda: answers(self.socket) or self.proc.poll() is not None)
        assert self.proc.poll() is None, self.proc.stderr.read()

    def status(self):
        out = subprocess.run([GPUMGR, "status", "--json", "--socket", self.socket],
                             capture_output=True, text=True, check=True, timeout=30)
        return json.loads(out.stdout)

    def lease(self, job):
        for lease in self.status()["leases"]:
            if lease["job_id"] == job:
                return lease
        return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=10)


@pytest.fixture
def tmp():
    with tempfile.TemporaryDirectory() as d:
        yield d


@pytest.fixture
def strays():
    """Pids to SIGKILL at the end whatever happened."""
    pids = []
    yield pids
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def run(d, job, vram, *cmd, extra=()):
    return subprocess.Popen([GPUMGR, "run", "--socket", d.socket, "--job-id", job, "--vram", vram,
                             *extra, "--", *cmd], stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_a_preemptible_run_is_signalled_and_the_urgent_waiter_starts(tmp, strays):
    d = Daemon(tmp)
    try:
        marks = os.path.join(tmp, "marks")
        # The batch job writes a line when SIGTERM comes and exits 0 a moment later (a
        # checkpoint), so that the test sees the signal reached the command.
        script = (f"trap 'echo term >> {marks}; exit 0' TERM; echo started >> {marks}; "
                  "while true; do sleep 0.05; done")
        batch = run(d, "batch", "8GiB", "sh", "-c", script, extra=("--preemptible",))
        strays.append(batch.pid)
        assert eventually(lambda: "started" in open(marks).read() if os.path.exists(marks)
                          else False)
        lease = d.lease("batch")
        assert lease["revocable"] == "preemptible"
        assert lease["revoking"] is False

        urgent = run(d, "urgent", "6GiB", "sh", "-c", f"echo urgent >> {marks}",
                     extra=("--priority", "5"))
        strays.append(urgent.pid)
        assert urgent.wait(timeout=30) == 0, urgent.stderr.read()
        assert batch.wait(timeout=30) == 0
        err = batch.stderr.read()
        assert "revoked for job 'urgent'" in err, err
        assert "sending TERM to the command" in err, err
        # The signal came first, then the urgent job ran: the order in the file.
        assert open(marks).read().split() == ["started", "term", "urgent"]
        s = d.status()
        assert s["leases"] == []
        assert s["stats"]["revocations_preempted"] == 1
        assert s["stats"]["revocation_kills"] == 0
    finally:
        assert d.stop() == 0


def test_a_holder_that_ignores_the_signal_is_killed_at_the_grace(tmp, strays):
    d = Daemon(tmp, "--revoke-grace", "1")
    try:
        pidfile = os.path.join(tmp, "pid")
        # Ignores SIGTERM; records its pid so that the test can see it is gone afterwards.
        script = f"trap '' TERM; echo $$ > {pidfile}; while true; do sleep 0.05; done"
        stubborn = run(d, "stubborn", "8GiB", "sh", "-c", script, extra=("--preemptible",))
        strays.append(stubborn.pid)
        assert eventually(lambda: os.path.exists(pidfile) and open(pidfile).read().strip())
        command_pid = int(open(pidfile).read())
        strays.append(command_pid)

        started = time.monotonic()
        urgent = run(d, "urgent", "6GiB", "true", extra=("--priority", "5"))
        strays.append(urgent.pid)
        # While the grace runs the lease is shown being revoked, with its deadline.
        assert eventually(lambda: (d.lease("stubborn") or {}).get("revoking") is True)
        lease = d.lease("stubborn")
        if lease is not None:
            assert lease["revoked_for"] == "urgent"
            assert 0 <= lease["revoke_in_s"] <= 1
        assert urgent.wait(timeout=30) == 0, urgent.stderr.read()
        assert time.monotonic() - started >= 1.0
        # The holder and its command were killed; nothing holds memory any more.
        assert stubborn.wait(timeout=30) == -signal.SIGKILL
        assert eventually(lambda: not alive(command_pid))
        s = d.status()
        assert s["leases"] == []
        assert s["devices"][0]["leased_bytes"] == 0
        assert s["stats"]["revocations_preempted"] == 1
        assert s["stats"]["revocation_kills"] == 1
    finally:
        assert d.stop() == 0
        log = d.proc.stderr.read()
        assert "revoke-killed" in log or "had not released" in log, log


def test_a_resident_goes_before_a_preemptible_job(tmp, strays):
    d = Daemon(tmp)
    try:
        resident = run(d, "model", "5GiB", "sleep", "60", extra=("--resident", "llama"))
        strays.append(resident.pid)
        assert eventually(lambda: d.lease("model") is not None)
        job = run(d, "job", "5GiB", "sleep", "60", extra=("--preemptible",))
        strays.append(job.pid)
        assert eventually(lambda: d.lease("job") is not None)
        assert d.lease("model")["resident"] == "llama"

        waiter = run(d, "waiter", "5GiB", "true", extra=("--priority", "1"))
        strays.append(waiter.pid)
        assert waiter.wait(timeout=30) == 0, waiter.stderr.read()
        # sleep dies of SIGTERM: `gpumgr run` exits 128 + 15.
        assert resident.wait(timeout=30) == 128 + signal.SIGTERM
        assert d.lease("job") is not None
        assert d.status()["stats"]["revocations_resident"] == 1
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=30)
    finally:
        assert d.stop() == 0


def test_bad_revocable_arguments_are_refused_by_name(tmp):
    d = Daemon(tmp)
    try:
        cases = [
            (("--preemptible", "--resident", "x"), "exclude each other"),
            (("--resident", ""), "--resident"),
            (("--resident", "a\x1bb"), "control characters"),
            (("--preempt-signal", "BOGUS"), "--preempt-signal"),
            (("--revoke-grace", "5"), "only with --preemptible"),
            (("--preemptible", "--revoke-grace", "-1"), "--revoke-grace"),
        ]
        for extra, words in cases:
            p = run(d, "bad", "1GiB", "true", extra=extra)
            assert p.wait(timeout=30) == 2, extra
            err = p.stderr.read()
            assert words in err, (extra, err)
            assert "\x1b" not in err
        assert d.status()["leases"] == []
        # The daemon refuses a bad grace in the request too, and a resident name in use.
        holder = run(d, "model", "1GiB", "sleep", "60", extra=("--resident", "llama"))
        try:
            assert eventually(lambda: d.lease("model") is not None)
            again = run(d, "model2", "1GiB", "true", extra=("--resident", "llama"))
            assert again.wait(timeout=30) != 0
            assert "already exists" in again.stderr.read()
        finally:
            holder.send_signal(signal.SIGTERM)
            holder.wait(timeout=30)
    finally:
        assert d.stop() == 0


def test_a_run_beside_its_resident_waits_and_never_revokes_it(tmp, strays):
    # 10 GiB: the resident "llama" (5 GiB) and another job (4 GiB). A 2 GiB job beside
    # "llama" cannot fit; only "llama" could make room, so it waits and "llama" stays.
    d = Daemon(tmp)
    try:
        model = run(d, "model", "5GiB", "sleep", "60", extra=("--resident", "llama"))
        strays.append(model.pid)
        assert eventually(lambda: d.lease("model") is not None)
        other = run(d, "other", "4GiB", "sleep", "60")
        strays.append(other.pid)
        assert eventually(lambda: d.lease("other") is not None)
        beside = run(d, "beside", "2GiB", "true", extra=("--beside", "llama"))
        strays.append(beside.pid)
        assert eventually(lambda: [w for w in d.status()["queue"] if w["job_id"] == "beside"])
        waiter = next(w for w in d.status()["queue"] if w["job_id"] == "beside")
        assert waiter["beside_resident"] == "llama"
        assert waiter["allowed_devices"] == [0]
        assert not d.lease("model")["revoking"]
        assert d.status()["stats"]["revocations_resident"] == 0
        other.send_signal(signal.SIGTERM)
        other.wait(timeout=30)
        assert beside.wait(timeout=30) == 0, beside.stderr.read()
        assert model.poll() is None and not d.lease("model")["revoking"]
        # Bad names are usage errors; a name that is no resident is refused by the daemon.
        for extra, code, words in [
                (("--beside", ""), 2, "must not be empty"),
                (("--beside", "a\x1bb"), 2, "control characters"),
                (("--beside", "llama", "--resident", "x"), 2, "exclude each other"),
                (("--beside", "nobody"), 1, "no resident 'nobody' to run beside")]:
            p = run(d, "bad", "1GiB", "true", extra=extra)
            assert p.wait(timeout=30) == code, extra
            err = p.stderr.read()
            assert words in err, (extra, err)
            assert "\x1b" not in err
        model.send_signal(signal.SIGTERM)
        model.wait(timeout=30)
    finally:
        assert d.stop() == 0


def test_a_resident_with_a_run_beside_it_is_in_use_across_a_restart(tmp, strays):
    # "llama" (5 GiB) with a 2 GiB run beside it: status says the model is in use by one job
    # and the job names it; the daemon restarts and both leases come back with that link;
    # when the job ends, the model is idle again.
    d = Daemon(tmp)
    try:
        model = run(d, "model", "5GiB", "sleep", "60", extra=("--resident", "llama"))
        strays.append(model.pid)
        assert eventually(lambda: d.lease("model") is not None)
        job = run(d, "job", "2GiB", "sleep", "60", extra=("--beside", "llama"))
        strays.append(job.pid)
        assert eventually(lambda: d.lease("job") is not None)
        assert d.lease("model")["in_use_by"] == 1
        assert d.lease("job")["beside_resident"] == "llama"
        assert "beside_resident" not in d.lease("model")
        text = subprocess.run([GPUMGR, "status", "--socket", d.socket], capture_output=True,
                              text=True, check=True, timeout=30).stdout
        assert "revocable: resident 'llama', in use by 1 job\n" in text, text
        assert "beside resident 'llama'\n" in text, text
        assert d.stop() == 0
        d = Daemon(tmp)
        assert eventually(lambda: d.lease("model") is not None and d.lease("job") is not None)
        assert d.lease("model")["in_use_by"] == 1
        assert d.lease("job")["beside_resident"] == "llama"
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=30)
        assert eventually(lambda: d.lease("job") is None)
        assert d.lease("model")["in_use_by"] == 0
        model.send_signal(signal.SIGTERM)
        model.wait(timeout=30)
    finally:
        assert d.stop() == 0


def python_module_dir():
    """The build's gpu_manager package (next to GPUMGR_BIN's build tree), or None."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(GPUMGR)))), "python")
    return path if os.path.isdir(os.path.join(path, "gpu_manager")) else None


@pytest.mark.skipif(python_module_dir() is None, reason="the build has no gpu_manager module")
def test_a_python_resident_whose_unload_hangs_is_killed_at_the_grace(tmp, strays):
    d = Daemon(tmp, "--revoke-grace", "1")
    try:
        script = (
            "import sys, threading, gpu_manager\n"
            "mgr = gpu_manager.GPUManager(memory_limit=1.0)\n"
            "stuck = threading.Event()\n"
            "resident = mgr.keep_resident('llama', 8000, unload=lambda: stuck.wait(600))\n"
            "print('ready', flush=True)\n"
            "stuck.wait(600)\n")
        env = dict(os.environ, PYTHONPATH=python_module_dir(), GPUMGR_SOCKET=d.socket)
        holder = subprocess.Popen(["/usr/bin/python3", "-c", script], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        strays.append(holder.pid)
        assert holder.stdout.readline().strip() == "ready", holder.stderr.read()
        assert d.lease("resident:llama")["resident"] == "llama"
        started = time.monotonic()
        job = run(d, "job", "6GiB", "true")
        strays.append(job.pid)
        assert job.wait(timeout=30) == 0, job.stderr.read()
        assert time.monotonic() - started >= 1.0
        assert holder.wait(timeout=30) == -signal.SIGKILL
        s = d.status()
        assert s["leases"] == []
        assert s["stats"]["revocations_resident"] == 1
        assert s["stats"]["revocation_kills"] == 1
    finally:
        assert d.stop() == 0
