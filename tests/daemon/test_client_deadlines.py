"""Clients that do not hang, and say what is wrong: with the daemon stopped (SIGSTOP), every client call ends at its
deadline and says so, instead of hanging for as long as the daemon is stopped or blaming a
closed connection. Quick calls wait GPUMGR_CLIENT_TIMEOUT seconds (5 by default); a waiting
acquire its own timeout plus that.
"""
import os
import signal
import subprocess
import tempfile
import time

import pytest

from cli_helpers import answers, eventually

GPUMGR = os.environ.get("GPUMGR_BIN", "gpumgr")


@pytest.fixture
def stopped_daemon():
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "gpumgr.sock")
        proc = subprocess.Popen([GPUMGR, "serve", "--socket", sock, "--no-http", "--simulate",
                                 "24GiB", "--state-dir", os.path.join(tmp, "state"), "--quiet"])
        assert eventually(lambda: answers(sock) or proc.poll() is not None)
        proc.send_signal(signal.SIGSTOP)
        try:
            yield sock
        finally:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0


def timed(args, env_timeout="1"):
    env = dict(os.environ, GPUMGR_CLIENT_TIMEOUT=env_timeout)
    start = time.monotonic()
    r = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    return r, time.monotonic() - start


def test_status_against_a_stopped_daemon_ends_at_its_deadline(stopped_daemon):
    r, took = timed([GPUMGR, "status", "--socket", stopped_daemon])
    assert r.returncode == 3, r.stderr
    assert "did not answer hello within 1 s" in r.stderr, r.stderr
    assert "closed the connection" not in r.stderr
    assert took < 1 + 3  # not the old 10 s, nor forever


def test_run_against_a_stopped_daemon_ends_at_its_deadline(stopped_daemon):
    r, took = timed([GPUMGR, "run", "--socket", stopped_daemon, "--vram", "1GiB", "--timeout", "2",
                     "--", "true"])
    assert r.returncode == 3, r.stderr
    assert "did not answer" in r.stderr, r.stderr
    assert took < 2 + 3


def test_the_default_quick_deadline_is_five_seconds(stopped_daemon):
    env = {k: v for k, v in os.environ.items() if k != "GPUMGR_CLIENT_TIMEOUT"}
    start = time.monotonic()
    r = subprocess.run([GPUMGR, "status", "--socket", stopped_daemon], capture_output=True,
                       text=True, timeout=60, env=env)
    took = time.monotonic() - start
    assert "did not answer hello within 5 s" in r.stderr, r.stderr
    assert 4.5 < took < 5 + 3


@pytest.mark.parametrize("make,what", [
    (lambda p: open(p, "w").close(), "a regular file"),
    (os.mkdir, "a folder"),
])
def test_a_socket_path_that_is_not_a_socket_is_named_as_such(make, what):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "not-a-socket")
        make(path)
        r = subprocess.run([GPUMGR, "status", "--socket", path], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 3
        assert f"{path} is {what}, not a daemon's socket" in r.stderr, r.stderr
        assert "start it with" not in r.stderr  # serve would refuse that path
