"""Starts http_fixture (the HTTP server over simulated devices, scripted from stdin)."""
import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import pytest


class Fixture:
    def __init__(self, *args):
        path = os.environ.get("GPUMGR_HTTP_FIXTURE")
        if not path:
            pytest.skip("GPUMGR_HTTP_FIXTURE is not set (run through ctest)")
        self.proc = subprocess.Popen(
            [path, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        first = self.proc.stdout.readline().split()
        assert first[:1] == ["port"], f"fixture said {first!r}"
        self.port = int(first[1])
        self.base = f"http://127.0.0.1:{self.port}"

    def command(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        assert answer.startswith("ok"), f"{line!r} -> {answer!r}"
        return answer

    def request(self, path, method="GET", data=None):
        """(status, headers, body) of a request; HTTP errors are answers too."""
        req = urllib.request.Request(self.base + path, method=method, data=data)
        try:
            with urllib.request.urlopen(req, timeout=10) as res:
                return res.status, res.headers, res.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode()

    def get_json(self, path):
        status, _, body = self.request(path)
        assert status == 200, body
        return json.loads(body)

    def wait_for(self, predicate, what, timeout=10.0):
        """Polls until predicate() is true: the queue is served by the manager's threads."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.returncode == 0, f"fixture exited {self.proc.returncode}"


@pytest.fixture
def server():
    f = Fixture("--devices", "2x24GiB", "--memory-limit", "0.8", "--max-concurrent-jobs", "3")
    yield f
    f.close()
