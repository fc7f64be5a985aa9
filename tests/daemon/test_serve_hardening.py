"""`gpumgr serve` hardened, through the real binary (GPUMGR_BIN): the socket folder rule (the
non-root fallback /tmp/gpumgr-<uid>/ cannot be hijacked), precise refusals of a socket path
that is a file or a folder, `--quiet`, and `--kill-orphans` ending the command of a killed
`gpumgr run`.

Each test starts its own daemon on a simulated device in a temporary folder. Waits poll a
condition with a deadline. Tests that need another uid run the daemon as nobody with setpriv
(root only; skipped otherwise).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from cli_helpers import answers, eventually

GPUMGR = os.environ.get("GPUMGR_BIN", "gpumgr")
GIB = 1024**3
NOBODY = 65534
ATTACKER = 12345  # any uid other than the daemon's

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not os.access("/usr/bin/setpriv", os.X_OK),
    reason="needs root and /usr/bin/setpriv to run the daemon as another uid")


def serve(socket_path, tmp, *extra, env=None, prefix=()):
    args = [*prefix, GPUMGR, "serve", "--no-http", "--simulate", "1x24GiB", "--memory-limit", "1",
            "--state-dir", os.path.join(tmp, "state"), *extra]
    if socket_path is not None:
        args += ["--socket", socket_path]
    return subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err


def hello(sock):
    f = sock.makefile("rw")
    f.write(json.dumps({"id": 0, "op": "hello", "version": 1}) + "\n")
    f.flush()
    reply = json.loads(f.readline())
    assert reply["ok"], reply
    return f


def call(f, request):
    f.write(json.dumps(request) + "\n")
    f.flush()
    return json.loads(f.readline())


# ---- the socket folder ----

def as_nobody_env():
    env = dict(os.environ)
    env.pop("XDG_RUNTIME_DIR", None)  # the fallback path: /tmp/gpumgr-<uid>/gpumgr.sock
    env.pop("GPUMGR_SOCKET", None)
    env["HOME"] = "/nonexistent"
    return env


NOBODY_PREFIX = ("/usr/bin/setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")


@pytest.fixture
def fallback_folder():
    """/tmp/gpumgr-65534, the fallback socket folder of nobody; removed before and after."""
    folder = f"/tmp/gpumgr-{NOBODY}"
    if os.path.lexists(folder):
        if os.path.islink(folder) or not os.path.isdir(folder):
            os.unlink(folder)
        else:
            shutil.rmtree(folder)
    yield folder
    if os.path.islink(folder):
        os.unlink(folder)
    elif os.path.exists(folder):
        shutil.rmtree(folder)


@pytest.fixture
def nobody_tmp():
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        os.mkdir(os.path.join(tmp, "state"), 0o700)
        os.chown(os.path.join(tmp, "state"), NOBODY, NOBODY)
        yield tmp


@needs_root
def test_the_fallback_folder_made_by_another_user_is_refused(fallback_folder, nobody_tmp):
    # The attack: another user creates nobody's fallback folder first, open to everyone.
    os.mkdir(fallback_folder)
    os.chown(fallback_folder, ATTACKER, ATTACKER)
    os.chmod(fallback_folder, 0o777)
    d = serve(None, nobody_tmp, env=as_nobody_env(), prefix=NOBODY_PREFIX)
    try:
        d.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    code, err = stop(d)
    assert code == 1, f"the daemon accepted a folder of uid {ATTACKER}: {err}"
    assert f"{fallback_folder} is owned by uid {ATTACKER}" in err, err
    assert "not by you (uid 65534) or root" in err, err
    assert not os.path.exists(os.path.join(fallback_folder, "gpumgr.sock"))


@needs_root
def test_the_fallback_folder_writable_by_others_is_refused(fallback_folder, nobody_tmp):
    os.mkdir(fallback_folder)
    os.chown(fallback_folder, NOBODY, NOBODY)
    os.chmod(fallback_folder, 0o777)
    d = serve(None, nobody_tmp, env=as_nobody_env(), prefix=NOBODY_PREFIX)
    try:
        d.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    code, err = stop(d)
    assert code == 1, err
    assert f"{fallback_folder} is writable by others" in err, err
    assert f"chmod go-w {fallback_folder}" in err, err


@needs_root
def test_the_fallback_folder_is_made_private_and_served(fallback_folder, nobody_tmp):
    d = serve(None, nobody_tmp, env=as_nobody_env(), prefix=NOBODY_PREFIX)
    path = os.path.join(fallback_folder, "gpumgr.sock")
    try:
        assert eventually(lambda: answers(path) or d.poll() is not None), d.stderr.read()
        assert d.poll() is None
        st = os.stat(fallback_folder)
        assert st.st_uid == NOBODY
        assert st.st_mode & 0o022 == 0
        assert os.stat(path).st_uid == NOBODY
    finally:
        code, err = stop(d)
    assert code == 0, err


def test_a_shared_sticky_folder_is_fine():
    # /tmp-like: writable by all but sticky, so nobody else can replace our socket.
    with tempfile.TemporaryDirectory() as tmp:
        shared = os.path.join(tmp, "shared")
        os.mkdir(shared)
        os.chmod(shared, 0o1777)
        path = os.path.join(shared, "g.sock")
        d = serve(path, tmp)
        try:
            assert eventually(lambda: answers(path) or d.poll() is not None)
            assert d.poll() is None, d.stderr.read()
        finally:
            code, err = stop(d)
        assert code == 0, err


@needs_root
def test_another_users_socket_in_a_sticky_folder_is_refused():
    with tempfile.TemporaryDirectory() as tmp:
        shared = os.path.join(tmp, "shared")
        os.mkdir(shared)
        os.chmod(shared, 0o1777)
        path = os.path.join(shared, "g.sock")
        planted = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        planted.bind(path)
        os.chown(path, ATTACKER, ATTACKER)
        planted.close()
        d = serve(path, tmp)
        try:
            d.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        code, err = stop(d)
        assert code == 1, err
        assert f"{path} is owned by uid {ATTACKER}" in err, err


# ---- a socket path that is a file or a folder ----

def test_a_socket_path_that_is_a_regular_file_says_what_to_do():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "notes.txt")
        with open(path, "w") as f:
            f.write("keep me\n")
        r = subprocess.run([GPUMGR, "serve", "--socket", path, "--no-http", "--simulate", "1x1GiB",
                            "--state-dir", os.path.join(tmp, "state")],
                           capture_output=True, text=True, timeout=15)
        assert r.returncode == 2, r.stderr
        assert f"{path} is a regular file (8 bytes), not a socket" in r.stderr, r.stderr
        assert f"remove it (rm {path})" in r.stderr, r.stderr
        assert "or choose another --socket" in r.stderr, r.stderr
        with open(path) as f:
            assert f.read() == "keep me\n"  # left alone


def test_a_socket_path_that_is_a_folder_says_what_to_do():
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "run")
        os.mkdir(folder)
        r = subprocess.run([GPUMGR, "serve", "--socket", folder, "--no-http", "--simulate",
                            "1x1GiB", "--state-dir", os.path.join(tmp, "state")],
                           capture_output=True, text=True, timeout=15)
        assert r.returncode == 2, r.stderr
        assert f"{folder} is a folder, not a socket" in r.stderr, r.stderr
        assert f"--socket {folder}/gpumgr.sock" in r.stderr, r.stderr


# ---- --quiet ----

def test_quiet_prints_only_errors_and_overuse():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gpumgr.sock")
        procs = os.path.join(tmp, "processes.txt")
        open(procs, "w").close()
        env = dict(os.environ, GPUMGR_SIMULATE_PROCESSES=procs)
        d = serve(path, tmp, "--quiet", "--poll-interval", "0.05", env=env)
        try:
            assert eventually(lambda: answers(path) or d.poll() is not None)
            assert d.poll() is None, d.stderr.read()
            # A holder that leaves with a lease and a waiter ("client pid N left: ...").
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            f = hello(s)
            assert call(f, {"id": 1, "op": "try_acquire", "job_id": "q", "bytes": 20 * GIB})["ok"]
            # This process uses more than its lease: an overuse event, printed even so.
            with open(procs, "w") as p:
                p.write(f"0 {os.getpid()} 22GiB\n")
            # ... and a waiter that leaves.
            f.write(json.dumps({"id": 2, "op": "acquire", "job_id": "w", "bytes": 20 * GIB}) +
                    "\n")
            f.flush()
            st = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            st.connect(path)
            g = hello(st)

            def snapshot():
                return call(g, {"id": 3, "op": "status"})["snapshot"]

            assert eventually(lambda: snapshot()["leases"][0]["overused"] is True)
            assert eventually(lambda: len(snapshot()["queue"]) == 1)
            f.close()
            s.close()
            assert eventually(lambda: snapshot()["leases"] == [] and snapshot()["queue"] == [])
            st.close()
        finally:
            code, err = stop(d)
        assert code == 0, err
        lines = err.splitlines()
        assert any("overuse: job 'q'" in l for l in lines), err
        others = [l for l in lines if "overuse" not in l]
        assert others == [], err


def test_without_quiet_the_daemon_says_who_left_and_that_it_stops():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gpumgr.sock")
        d = serve(path, tmp)
        try:
            assert eventually(lambda: answers(path) or d.poll() is not None)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            f = hello(s)
            assert call(f, {"id": 1, "op": "try_acquire", "job_id": "q", "bytes": GIB})["ok"]
            f.close()
            s.close()
        finally:
            code, err = stop(d)
        assert code == 0, err
        assert "listening on" in err
        assert "left: released 1 lease(s)" in err
        assert "shutting down" in err
        assert "stopped" in err


# ---- --kill-orphans ----

def alive(pid):
    """Whether pid runs (a zombie waiting for its reaper does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def test_kill_orphans_ends_the_command_of_a_killed_run():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gpumgr.sock")
        d = serve(path, tmp, "--kill-orphans", "--kill-orphans-grace", "1")
        bystander = subprocess.Popen(["sleep", "300"])  # same uid, not under the lease
        try:
            assert eventually(lambda: answers(path) or d.poll() is not None)
            assert d.poll() is None, d.stderr.read()
            pids = os.path.join(tmp, "pids")
            # The command: a plain sleep, and a shell that ignores SIGTERM (SIGKILL ends it).
            script = (f'sleep 300 & echo $! >> {pids}; '
                      f'sh -c \'trap "" TERM; while :; do sleep 0.05; done\' & echo $! >> {pids}; '
                      'wait')
            run = subprocess.Popen([GPUMGR, "run", "--socket", path, "--vram", "1GiB",
                                    "--job-id", "orphaned", "--", "sh", "-c", script])
            assert eventually(lambda: os.path.exists(pids) and
                              len(open(pids).read().split()) == 2)
            tree = [int(p) for p in open(pids).read().split()]
            time.sleep(1.0)  # the daemon reads its holders' process trees twice a second
            run.kill()  # SIGKILL: `gpumgr run` cannot end its command itself
            run.wait()
            assert eventually(lambda: not any(alive(p) for p in tree), timeout=10), \
                [p for p in tree if alive(p)]
            assert alive(bystander.pid)
        finally:
            bystander.kill()
            bystander.wait()
            code, err = stop(d)
        assert code == 0, err
        assert "--kill-orphans" in err and "SIGTERM" in err, err
        assert "SIGKILL" in err, err


def test_without_kill_orphans_the_command_outlives_its_lease():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gpumgr.sock")
        d = serve(path, tmp)
        child = None
        try:
            assert eventually(lambda: answers(path) or d.poll() is not None)
            pids = os.path.join(tmp, "pids")
            run = subprocess.Popen([GPUMGR, "run", "--socket", path, "--vram", "1GiB", "--", "sh",
                                    "-c", f"sleep 300 & echo $! > {pids}; wait"])
            assert eventually(lambda: os.path.exists(pids) and open(pids).read().strip())
            child = int(open(pids).read())
            time.sleep(1.0)
            run.kill()
            run.wait()
            time.sleep(1.5)
            assert alive(child)  # the default: the daemon kills nothing
        finally:
            if child is not None:
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            code, err = stop(d)
        assert code == 0, err


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
