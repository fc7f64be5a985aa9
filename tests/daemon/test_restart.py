"""A daemon restart loses nobody's lease and nobody's place (docs/daemon.md, "Restarts").

The daemon writes every grant and every waiter to its lease journal (in --state-dir) before
it answers. The next daemon re-adopts the leases whose holders still run and restores the
waiters in their old order; clients reconnect and reattach on their own (`gpumgr run`, the
client library), a lease by its token and a waiter as the same process. What nobody takes back
within --reattach-grace is released (failed) or cancelled. A holder from before a restart can
never release a lease granted since to someone else.
"""
import json
import os
import random
import signal
import socket as sk
import subprocess
import tempfile
import time

import pytest

from cli_helpers import Session, answers, eventually

GPUMGR = os.environ.get("GPUMGR_BIN", "gpumgr")
GIB = 1024**3


def serve(tmp, *extra, spec="24GiB"):
    sock = os.path.join(tmp, "gpumgr.sock")
    log = open(os.path.join(tmp, "daemon.log"), "a")
    proc = subprocess.Popen([GPUMGR, "serve", "--socket", sock, "--no-http", "--simulate", spec,
                             "--state-dir", os.path.join(tmp, "state"), *extra],
                            stderr=log)
    log.close()
    assert eventually(lambda: answers(sock) or proc.poll() is not None)
    assert proc.poll() is None
    return sock, proc


def daemon_log(tmp):
    with open(os.path.join(tmp, "daemon.log")) as f:
        return f.read()


def snapshot(sock):
    out = subprocess.run([GPUMGR, "status", "--json", "--socket", sock], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def leases(sock):
    return {l["job_id"]: l for l in snapshot(sock)["leases"]}


def waiters(sock):
    return [w["job_id"] for w in snapshot(sock)["queue"]]


def stop(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout=15)


def run(sock, job, vram, *cmd, env=None):
    return subprocess.Popen([GPUMGR, "run", "--socket", sock, "--job-id", job, "--vram", vram,
                             "--", *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_lease_survives_a_restart_and_nobody_else_can_take_its_job_id(how):
    """The issue's repro: `run --job-id train-7`, restart the daemon, another client asks for
    train-7. Before, the old holder later released the new client's lease and exited 0."""
    with tempfile.TemporaryDirectory() as tmp:
        sock, first = serve(tmp)
        old = run(sock, "train-7", "1GiB", "sleep", "4")
        assert eventually(lambda: "train-7" in leases(sock))
        before = leases(sock)["train-7"]
        stop(first, how)
        sock, second = serve(tmp)
        try:
            after = leases(sock)
            assert "train-7" in after, daemon_log(tmp)
            assert after["train-7"]["pid"] == old.pid
            assert after["train-7"]["bytes"] == GIB
            assert after["train-7"]["devices"] == before["devices"]
            thief = subprocess.run([GPUMGR, "run", "--socket", sock, "--job-id", "train-7",
                                    "--vram", "5GiB", "--", "true"], capture_output=True,
                                   text=True, timeout=30)
            assert thief.returncode != 0
            assert "already_exists" in thief.stderr, thief.stderr
            assert eventually(lambda: "reattached job 'train-7'" in daemon_log(tmp))
            code = old.wait(timeout=30)
            err = old.stderr.read()
            assert code == 0, err
            assert "lease" not in err, err
            assert eventually(lambda: leases(sock) == {})
            assert snapshot(sock)["stats"]["jobs_succeeded"] == 1
        finally:
            assert stop(second) == 0


def test_a_lease_whose_holder_died_during_the_restart_is_not_restored():
    with tempfile.TemporaryDirectory() as tmp:
        sock, first = serve(tmp)
        holder = run(sock, "gone", "1GiB", "sleep", "60")
        assert eventually(lambda: "gone" in leases(sock))
        stop(first, signal.SIGKILL)
        os.killpg(holder.pid, signal.SIGKILL)  # run and its command
        holder.wait(timeout=15)
        sock, second = serve(tmp)
        try:
            assert leases(sock) == {}
            assert "job 'gone' of pid %d: its holder is gone; its lease is released (failed)" % (
                holder.pid) in daemon_log(tmp)
            assert snapshot(sock)["stats"]["jobs_failed"] == 1
        finally:
            assert stop(second) == 0


def test_what_is_not_reattached_within_the_grace_is_released_and_then_lost():
    with tempfile.TemporaryDirectory() as tmp:
        sock, first = serve(tmp)
        s = Session(sock)
        granted = s.call(op="try_acquire", job_id="idle", bytes=GIB)
        token = granted["lease"]["token"]
        stop(first, signal.SIGKILL)
        s.close()
        sock, second = serve(tmp, "--reattach-grace", "1")
        try:
            assert "idle" in leases(sock)  # kept for its client during the grace
            assert eventually(lambda: "idle" not in leases(sock), timeout=5)
            assert "job 'idle' of pid %d: lease not reattached within 1 s; released (failed)" % (
                os.getpid()) in daemon_log(tmp)
            assert snapshot(sock)["stats"]["jobs_failed"] == 1
            late = Session(sock)
            r = late.call(op="reattach", job_id="idle", token=token)
            assert not r["ok"] and r["error"]["code"] == "not_found"
            assert "has no lease or waiting request here to take back" in r["error"]["message"]
            late.close()
        finally:
            assert stop(second) == 0


def reattach_from_another_process(sock, job, token=None):
    """The daemon's answer to a reattach sent by a process that is not this one."""
    req = {"id": 1, "op": "reattach", "job_id": job}
    if token is not None:
        req["token"] = token
    code = ("import json, socket, sys\n"
            "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile('rw')\n"
            "f.write(json.dumps({'id': 0, 'op': 'hello', 'version': 1}) + '\\n'); f.flush()\n"
            "f.readline()\n"
            "f.write(sys.argv[2] + '\\n'); f.flush()\n"
            "print(f.readline())\n")
    out = subprocess.run(["/usr/bin/python3", "-c", code, sock, json.dumps(req)],
                         capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def test_a_lease_is_taken_back_only_with_its_token_and_a_waiter_only_by_its_process():
    with tempfile.TemporaryDirectory() as tmp:
        sock, first = serve(tmp, spec="1x4GiB")
        s = Session(sock)
        token = s.call(op="try_acquire", job_id="held", bytes=3 * GIB)["lease"]["token"]
        s.send(op="acquire", job_id="queued", bytes=3 * GIB)
        assert eventually(lambda: waiters(sock) == ["queued"])
        stop(first, signal.SIGKILL)
        s.close()
        sock, second = serve(tmp, spec="1x4GiB")
        try:
            me = Session(sock)
            wrong = me.call(op="reattach", job_id="held", token="0" * 32)
            assert wrong["error"]["code"] == "permission_denied", wrong
            assert "not its lease's token" in wrong["error"]["message"]
            # Another process: a lease needs its token, a waiter cannot be taken at all.
            r = reattach_from_another_process(sock, "held")
            assert r["error"]["code"] == "permission_denied", r
            assert "or by naming its token" in r["error"]["message"]
            r = reattach_from_another_process(sock, "queued")
            assert r["error"]["code"] == "permission_denied", r
            assert "only by the process that made it" in r["error"]["message"]
            # The holder takes both back; releasing the lease grants the waiter.
            back = me.call(op="reattach", job_id="held", token=token)
            assert back["ok"] and back["lease"]["token"] == token
            assert back["lease"]["bytes"] == 3 * GIB
            wait_id = me.send(op="reattach", job_id="queued")
            assert me.call(op="release", job_id="held", token=token)["ok"]
            grant = me.reply(wait_id)
            assert grant["ok"] and grant["lease"]["job_id"] == "queued"
            me.close()
            assert eventually(lambda: leases(sock) == {})
        finally:
            assert stop(second) == 0


def test_another_process_with_the_token_takes_a_lease_back():
    """The token is the lease's name: whoever the holder gave it to (of its uid) may take
    the lease back, as a helper process of a job would."""
    with tempfile.TemporaryDirectory() as tmp:
        sock, first = serve(tmp)
        s = Session(sock)
        token = s.call(op="try_acquire", job_id="shared", bytes=GIB)["lease"]["token"]
        stop(first, signal.SIGKILL)
        s.close()
        sock, second = serve(tmp)
        try:
            r = reattach_from_another_process(sock, "shared", token)
            assert r["ok"] and r["lease"]["job_id"] == "shared", r
            # That process has exited: its connection closed, and the lease ended with it.
            assert eventually(lambda: leases(sock) == {})
        finally:
            assert stop(second) == 0


def test_three_holders_and_200_waiters_lose_no_lease_and_no_place():
    """The issue's acceptance run: 3 `gpumgr run` holders and 200 waiters, the daemon killed
    with SIGKILL and started again. The holders reattach by themselves and end with exit 0;
    the waiters, reattached in a shuffled order, are still granted in their old order."""
    n = 200
    with tempfile.TemporaryDirectory() as tmp:
        extra = ("--memory-limit", "1", "--max-concurrent-jobs", "1000")
        sock, first = serve(tmp, *extra)
        holders = [run(sock, "hold%d" % i, "8GiB", "sleep", "3") for i in range(3)]
        assert eventually(lambda: len(leases(sock)) == 3)
        s = Session(sock)
        order = ["w%03d" % i for i in range(n)]
        for job in order:
            s.send(op="acquire", job_id=job, bytes=8 * GIB)
        assert eventually(lambda: len(waiters(sock)) == n)
        assert waiters(sock) == order
        stop(first, signal.SIGKILL)
        s.close()
        sock, second = serve(tmp, *extra)
        try:
            assert sorted(leases(sock)) == ["hold0", "hold1", "hold2"]
            assert waiters(sock) == order
            back = Session(sock)
            shuffled = order[:]
            random.Random(7).shuffle(shuffled)
            for job in shuffled:
                back.send(op="reattach", job_id=job)
            assert eventually(lambda: "every restored job is taken back" in daemon_log(tmp))
            for h in holders:
                assert h.wait(timeout=60) == 0, h.stderr.read()
            granted = []
            while len(granted) < n:
                r = back.next_reply()
                assert r["ok"], r
                job = r["lease"]["job_id"]
                granted.append(job)
                assert back.call(op="release", job_id=job, token=r["lease"]["token"])["ok"]
            assert granted == order
            back.close()
            assert eventually(lambda: leases(sock) == {} and waiters(sock) == [])
        finally:
            assert stop(second) == 0


def test_a_waiting_run_keeps_its_place_across_a_restart():
    with tempfile.TemporaryDirectory() as tmp:
        sock, first = serve(tmp, "--memory-limit", "1", spec="1x4GiB")
        holder = run(sock, "first", "3GiB", "sleep", "2")
        assert eventually(lambda: "first" in leases(sock))
        second_job = run(sock, "second", "3GiB", "echo", "second ran")
        assert eventually(lambda: waiters(sock) == ["second"])
        queued_at = time.monotonic()
        time.sleep(0.5)  # so that its waiting time before the restart is worth checking
        stop(first, signal.SIGTERM)
        sock, again = serve(tmp, "--memory-limit", "1", spec="1x4GiB")
        try:
            assert waiters(sock) == ["second"]
            # Its waiting time goes on from its first request, not from the restart.
            waited = snapshot(sock)["queue"][0]["waited_s"]
            assert waited >= time.monotonic() - queued_at - 0.1, waited
            assert holder.wait(timeout=30) == 0, holder.stderr.read()
            out, err = second_job.communicate(timeout=30)
            assert second_job.returncode == 0, err
            assert out == "second ran\n"
        finally:
            assert stop(again) == 0


def test_run_says_lease_lost_when_no_daemon_comes_back():
    with tempfile.TemporaryDirectory() as tmp:
        sock, first = serve(tmp)
        env = dict(os.environ, GPUMGR_REATTACH_TIMEOUT="1")
        started = os.path.join(tmp, "started")
        holder = run(sock, "orphan", "1GiB", "sh", "-c", "touch %s; sleep 3" % started, env=env)
        assert eventually(lambda: os.path.exists(started))
        stop(first, signal.SIGKILL)
        code = holder.wait(timeout=30)
        err = holder.stderr.read()
        assert code != 0
        assert "lease lost" in err and "no daemon came back within 1 s" in err, err


def test_run_says_lease_lost_when_the_restarted_daemon_did_not_keep_it():
    """A new daemon with another state directory knows nothing of the lease."""
    with tempfile.TemporaryDirectory() as tmp:
        sock, first = serve(tmp)
        started = os.path.join(tmp, "started")
        holder = run(sock, "forgotten", "1GiB", "sh", "-c", "touch %s; sleep 2" % started)
        assert eventually(lambda: os.path.exists(started))  # its grant was answered
        stop(first, signal.SIGKILL)
        other = os.path.join(tmp, "other")
        os.mkdir(other)
        second = subprocess.Popen([GPUMGR, "serve", "--socket", sock, "--no-http", "--simulate",
                                   "24GiB", "--state-dir", os.path.join(other, "state"),
                                   "--quiet"])
        try:
            assert eventually(lambda: answers(sock))
            code = holder.wait(timeout=30)
            err = holder.stderr.read()
            assert code != 0
            assert "lease lost" in err and "did not give job 'forgotten' back" in err, err
        finally:
            assert stop(second) == 0


def test_a_holder_from_before_a_restart_releases_nobody_elses_lease():
    """Through the protocol: the token of the first grant of a job id does not release a
    second grant of the same id."""
    with tempfile.TemporaryDirectory() as tmp:
        sock, daemon = serve(tmp)
        try:
            s = Session(sock)
            first = s.call(op="try_acquire", job_id="j", bytes=GIB)
            token = first["lease"]["token"]
            assert len(token) == 32
            assert s.call(op="release", job_id="j", token=token)["ok"]
            second = s.call(op="try_acquire", job_id="j", bytes=2 * GIB)
            assert second["lease"]["token"] != token
            stale = s.call(op="release", job_id="j", token=token)
            assert not stale["ok"] and stale["error"]["code"] == "lease_lost"
            assert "lease lost" in stale["error"]["message"]
            assert leases(sock)["j"]["bytes"] == 2 * GIB
            assert s.call(op="release", job_id="j", token=second["lease"]["token"])["ok"]
            s.close()
        finally:
            assert stop(daemon) == 0


def fake_daemon_that_dies(sock, after_hello):
    """A stand-in for a daemon that goes away: it accepts one connection, answers hello (when
    `after_hello`) and reads one request, then closes the connection and its socket, as a
    daemon killed at that moment would. Returns the thread doing it."""
    import threading
    listener = sk.socket(sk.AF_UNIX, sk.SOCK_STREAM)
    listener.bind(sock)
    listener.listen(8)

    def serve_once():
        conn, _ = listener.accept()
        f = conn.makefile("r")
        hello = json.loads(f.readline())
        if after_hello:
            conn.sendall((json.dumps({"id": hello["id"], "ok": True, "version": 1}) + "\n")
                         .encode())
            f.readline()  # the request, never journaled
        f.close()
        conn.close()
        listener.close()
        os.unlink(sock)

    t = threading.Thread(target=serve_once, daemon=True)
    t.start()
    return t


def test_a_request_that_never_reached_the_journal_queues_again():
    """The daemon went away after reading the acquire and before writing it down: the next
    daemon has no record of it, so nothing was granted, and the client asks again."""
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "gpumgr.sock")
        dying = fake_daemon_that_dies(sock, after_hello=True)
        job = subprocess.Popen([GPUMGR, "run", "--socket", sock, "--job-id", "late", "--vram",
                                "1GiB", "--", "echo", "late ran"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        dying.join(timeout=20)
        assert not dying.is_alive()
        sock, daemon = serve(tmp)
        try:
            out, err = job.communicate(timeout=30)
            assert job.returncode == 0, err
            assert out == "late ran\n"
        finally:
            assert stop(daemon) == 0


def test_a_daemon_that_goes_away_during_hello_is_tried_again():
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "gpumgr.sock")
        dying = fake_daemon_that_dies(sock, after_hello=False)
        status = subprocess.Popen([GPUMGR, "status", "--json", "--socket", sock],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        dying.join(timeout=20)
        sock, daemon = serve(tmp)
        try:
            out, err = status.communicate(timeout=30)
            assert status.returncode == 0, err
            assert json.loads(out)["leases"] == []
        finally:
            assert stop(daemon) == 0
