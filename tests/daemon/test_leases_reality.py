"""Leases meet reality, through the real binaries: measured use per lease, overuse counted
against admission, the overuse policy, and learned estimates that survive the daemon.

Each test starts its own `gpumgr serve` on simulated devices, with GPUMGR_SIMULATE_PROCESSES
naming a file that scripts what processes use (lines DEVICE PID SIZE, re-read at every
poll). A holder's command writes its own pid into that file, so that its use is attributed
to its lease exactly as NVML's per-process list would be. Waits poll a condition with a
deadline; nothing relies on a sleep being long enough.
"""
import json
import os
import random
import signal
import subprocess
import tempfile
import time

import pytest

from cli_helpers import Daemon, eventually

GPUMGR = os.environ.get("GPUMGR_BIN", "gpumgr")
GIB = 1024**3
MIB = 1024**2


@pytest.fixture
def tmp():
    with tempfile.TemporaryDirectory() as t:
        yield t


def holder(d, job, use, vram="4GiB", extra=(), hold="30"):
    """A `gpumgr run` whose command scripts its own use (`use`, e.g. '14GiB') and sleeps."""
    line = f'0 $$ {use}'
    return d.run("sh", "-c", f'echo "{line}" >> {d.procs}; exec sleep {hold}', vram=vram,
                 extra=("--job-id", job, *extra))


def used(lease):
    return lease["usage"][0]["used_bytes"] if lease and lease["usage"] else None


def test_the_scenario_is_refused_until_the_overuse_falls(tmp):
    d = Daemon(tmp)
    try:
        a = holder(d, "A", "14GiB")
        assert eventually(lambda: used(d.lease("A")) == 14 * GIB), d.status()
        dev = d.status()["devices"][0]
        capacity = 24 * GIB * 4 // 5
        assert dev["leased_bytes"] == 4 * GIB
        assert dev["foreign_bytes"] == 0
        assert dev["overuse_bytes"] == 10 * GIB
        assert dev["admissible_bytes"] == capacity - 14 * GIB
        lease = d.lease("A")
        assert lease["usage"][0]["peak_used_bytes"] == 14 * GIB
        assert lease["overused"] is True

        # B does not fit now: with no time to wait it times out at once ...
        b = d.run("true", vram="12GiB", extra=("--job-id", "B", "--timeout", "0"))
        assert b.wait(timeout=30) == 1
        assert "no lease for job 'B'" in b.stderr.read()
        # ... and waiting, it waits until A's use falls, then starts by itself.
        b = d.run("true", vram="12GiB", extra=("--job-id", "B"))
        assert eventually(lambda: any(w["job_id"] == "B" for w in d.status()["queue"]))
        time.sleep(0.3)  # several polls: still waiting
        assert b.poll() is None
        pid = d.lease("A")["pid"]
        # A's command (the child of `gpumgr run`, pid `pid`) now uses 3 GiB.
        child = int(open(f"/proc/{pid}/task/{pid}/children").read().split()[0])
        d.script([f"0 {child} 3GiB"])
        assert b.wait(timeout=30) == 0, b.stderr.read()
        assert "overuse: job 'A'" in d.stderr()
        a.send_signal(signal.SIGTERM)
        a.wait(timeout=30)
        status = d.status()
        assert status["stats"]["overuse_events"] == 1
        assert status["leases"] == []
    finally:
        assert d.stop() == 0


def test_terminate_ends_a_holder_that_stays_over_and_frees_its_lease(tmp):
    d = Daemon(tmp, extra=("--on-overuse", "terminate", "--overuse-grace", "0.5"))
    try:
        a = holder(d, "greedy", "8GiB", vram="4GiB")
        assert eventually(lambda: d.lease("greedy") is not None)
        start = time.monotonic()
        code = a.wait(timeout=30)
        took = time.monotonic() - start
        # SIGTERM to the whole tree after one grace period: `gpumgr run` and its command.
        assert code == 128 + signal.SIGTERM, a.stderr.read()
        assert took < 0.5 + 5.0
        assert eventually(lambda: d.status()["leases"] == [])
        assert "terminating: job 'greedy'" in d.stderr()
        assert d.status()["stats"]["overuse_terminations"] == 1
        # A holder that stays under is left alone.
        ok = holder(d, "modest", "2GiB", vram="4GiB", hold="1")
        assert ok.wait(timeout=30) == 0
    finally:
        assert d.stop() == 0


def test_terminate_kills_a_holder_that_ignores_sigterm(tmp):
    d = Daemon(tmp, extra=("--on-overuse", "terminate", "--overuse-grace", "0.3"))
    try:
        stubborn = d.run("sh", "-c",
                         f'trap "" TERM; echo "0 $$ 9GiB" >> {d.procs}; '
                         'while :; do sleep 0.05; done',
                         vram="4GiB", extra=("--job-id", "stubborn"))
        assert eventually(lambda: d.lease("stubborn") is not None)
        assert eventually(lambda: d.status()["leases"] == [], timeout=20), d.stderr()
        assert "killed: job 'stubborn'" in d.stderr()
        stubborn.wait(timeout=30)
        assert d.status()["stats"]["jobs_failed"] >= 1
    finally:
        assert d.stop() == 0


def test_report_never_kills(tmp):
    d = Daemon(tmp, extra=("--overuse-grace", "0"))
    try:
        a = holder(d, "over", "20GiB", vram="4GiB")
        assert eventually(lambda: (d.lease("over") or {}).get("overused") is True)
        time.sleep(0.5)  # ten polls
        assert a.poll() is None
        assert d.lease("over")["overused_s"] > 0
        a.send_signal(signal.SIGTERM)
        a.wait(timeout=30)
    finally:
        assert d.stop() == 0


def kind_run(d, kind, peak_mib, hold="0.4"):
    r = d.run("sh", "-c", f'echo "0 $$ {peak_mib}MiB" > {d.procs}; sleep {hold}',
              vram="10GiB", extra=("--kind", kind))
    assert r.wait(timeout=30) == 0, r.stderr.read()
    d.script([])  # the process is gone: so is its use


def estimates(d):
    out = subprocess.run([GPUMGR, "estimates", "--json", "--socket", d.socket],
                         capture_output=True, text=True, check=True)
    return {e["kind"]: e for e in json.loads(out.stdout)}


def test_a_kind_learns_its_estimate_across_daemon_restarts(tmp):
    d = Daemon(tmp)
    peaks = [3000, 1000, 5000, 2000, 4000]
    try:
        auto = d.run("true", vram="auto", extra=("--kind", "sdxl"))
        assert auto.wait(timeout=30) == 1
        err = auto.stderr.read()
        assert "no learned estimate for job kind 'sdxl'" in err and "no recorded runs" in err, err
        for peak in peaks[:3]:
            kind_run(d, "sdxl", peak)
    finally:
        assert d.stop() == 0
    d = Daemon(tmp)  # a restart keeps what was recorded
    try:
        assert estimates(d)["sdxl"]["runs"] == 3
        for peak in peaks[3:]:
            kind_run(d, "sdxl", peak)
        e = estimates(d)["sdxl"]
        assert e["runs"] == 5
        assert e["peak_max_bytes"] == 5000 * MIB
        assert e["peak_p50_bytes"] == 3000 * MIB
        # p95 of five (nearest rank) is the largest; + 10% = 5500 MiB.
        assert e["estimate_bytes"] == 5500 * MIB
        auto = d.run("sh", "-c", 'echo "$GPUMGR_LEASE_JOB_ID"', vram="auto",
                     extra=("--kind", "sdxl"))
        assert auto.wait(timeout=30) == 0
        err = auto.stderr.read()
        assert "leased 5.4 GiB per GPU (learned from 5 runs" in err, err
        text = subprocess.run([GPUMGR, "estimates", "--socket", d.socket], capture_output=True,
                              text=True, check=True).stdout
        assert "sdxl" in text and "learned from" in text
        forget = subprocess.run([GPUMGR, "estimates", "--socket", d.socket, "forget", "sdxl"],
                                capture_output=True, text=True)
        assert forget.returncode == 0, forget.stderr
        assert "sdxl" not in estimates(d)
    finally:
        assert d.stop() == 0


def test_the_history_survives_sigkill_of_the_daemon_while_it_records(tmp):
    rng = random.Random(7)
    recorded = 0
    for _ in range(8):
        d = Daemon(tmp)
        assert "corrupt" not in d.stderr() and "moved it" not in d.stderr(), d.stderr()
        now = estimates(d).get("k", {}).get("runs", 0)
        assert now >= recorded  # nothing recorded before is ever lost
        recorded = now
        # No daemon comes back for them: they give up reattaching at once.
        quick = dict(os.environ, GPUMGR_REATTACH_TIMEOUT="0")
        runs = [d.run("sh", "-c", f'echo "0 $$ {100 + i}MiB" >> {d.procs}; sleep 0.1',
                      vram="1GiB", extra=("--kind", "k", "--job-id", f"j{recorded}-{i}"),
                      env=quick)
                for i in range(4)]
        time.sleep(rng.uniform(0.05, 0.4))  # kill somewhere among the releases
        d.stop(signal.SIGKILL)
        for r in runs:
            r.wait(timeout=30)
        d.script([])
    d = Daemon(tmp)
    try:
        assert "corrupt" not in d.stderr(), d.stderr()
        assert estimates(d).get("k", {}).get("runs", 0) >= recorded
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize("args,message", [
    (("--vram", "auto"), "--vram auto needs --kind"),
    (("--vram", "4GiB", "--kind", ""), "--kind: job kind must not be empty"),
    (("--vram", "4GiB", "--kind", "a\tb"), "--kind: job kind must not contain control"),
    (("--vram", "4GiB", "--default-vram", "2GiB", "--kind", "k"), "only with --vram auto"),
    (("--vram", "auto", "--kind", "k", "--default-vram", "0"), "--default-vram: must be positive"),
])
def test_bad_run_arguments_are_refused_by_name(tmp, args, message):
    r = subprocess.run([GPUMGR, "run", "--socket", os.path.join(tmp, "none.sock"), *args, "--",
                        "true"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr


@pytest.mark.parametrize("args,message", [
    (("--on-overuse", "kill"), "unknown overuse policy 'kill'"),
    (("--overuse-grace", "-1"), "overuse grace must be between 0 and 86400"),
    (("--overuse-grace", "nan"), "overuse grace"),
    (("--overuse-tolerance", "5000"), "overuse tolerance must be between 0 and 1000"),
    (("--poll-interval", "0"), "--poll-interval must be between"),
])
def test_bad_serve_arguments_are_refused_by_name(tmp, args, message):
    r = subprocess.run([GPUMGR, "serve", "--socket", os.path.join(tmp, "s.sock"), "--no-http",
                        "--simulate", "24GiB", "--state-dir", os.path.join(tmp, "st"), *args],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert not os.path.exists(os.path.join(tmp, "s.sock"))


def test_a_state_dir_that_is_a_file_is_refused(tmp):
    path = os.path.join(tmp, "file")
    open(path, "w").close()
    r = subprocess.run([GPUMGR, "serve", "--socket", os.path.join(tmp, "s.sock"), "--no-http",
                        "--simulate", "24GiB", "--state-dir", path],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "--state-dir" in r.stderr and "is a file" in r.stderr, r.stderr


def test_a_corrupt_history_is_moved_aside_and_the_daemon_starts(tmp):
    state = os.path.join(tmp, "state")
    os.makedirs(state)
    with open(os.path.join(state, "history.db"), "wb") as f:
        f.write(b"this is not a database" * 100)
    d = Daemon(tmp)
    try:
        err = d.stderr()
        assert "was corrupt" in err and "moved it to" in err, err
        assert estimates(d) == {}
        assert any(n.startswith("history.db.corrupt-") for n in os.listdir(state))
    finally:
        assert d.stop() == 0
