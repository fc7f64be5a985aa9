"""The JSON API and the read-only rule, over the fixture's HTTP server."""
import json
import os
import subprocess

import pytest

MiB = 1024**2


def keys(value):
    """The shape of a JSON value: nested key sets (lists by their first element)."""
    if isinstance(value, dict):
        return {k: keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [keys(value[0])] if value else []
    return None


def test_status_has_the_shape_of_status_json(server):
    cli = os.environ.get("GPUMGR_CLI")
    if not cli:
        pytest.skip("GPUMGR_CLI is not set (run through ctest)")
    env = {k: v for k, v in os.environ.items() if k != "GPUMGR_SOCKET"}
    out = subprocess.run([cli, "--simulate", "2x24GiB", "status", "--json"], env=env,
                         check=True, capture_output=True, text=True).stdout
    from_cli = json.loads(out)
    from_http = server.get_json("/api/v1/status")
    assert keys(from_http) == keys(from_cli)
    assert from_http["version"] == from_cli["version"] == 1
    assert [d["total_bytes"] for d in from_http["devices"]] == [24 * 1024 * MiB] * 2


def test_leases_lists_the_lease(server):
    server.command("acquire sdxl-1 2048 1 python sdxl.py --steps 30")
    server.command("acquire a 15000 0")
    server.command("acquire b 15000 1")
    server.command("wait later 10000 5 python later.py")
    server.wait_for(lambda: server.command("status").endswith("queue=1"), "the queued job")
    body = server.get_json("/api/v1/leases")
    lease = next(l for l in body["leases"] if l["job_id"] == "sdxl-1")
    assert lease["bytes"] == 2048 * MiB
    assert lease["devices"] == [1]
    assert lease["pid"] == server.proc.pid
    assert lease["command"] == "python sdxl.py --steps 30"
    assert lease["age_s"] >= 0
    assert {l["job_id"] for l in body["leases"]} == {"sdxl-1", "a", "b"}
    assert [(w["job_id"], w["priority"], w["position"], w["bytes"]) for w in body["queue"]] == [
        ("later", 5, 0, 10000 * MiB)]
    status = server.get_json("/api/v1/status")
    assert {l["job_id"] for l in status["leases"]} == {"sdxl-1", "a", "b"}
    assert status["devices"][1]["leased_bytes"] == (2048 + 15000) * MiB


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/api/v1/leases", "/api/v1/status", "/metrics", "/"])
def test_nothing_changes_a_lease(server, method, path):
    server.command("acquire keep 1000")
    status, headers, _ = server.request(path, method=method, data=b'{"job_id": "keep"}')
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    assert [l["job_id"] for l in server.get_json("/api/v1/leases")["leases"]] == ["keep"]


def test_unknown_paths_are_404(server):
    for path in ("/api/v1/lease", "/api", "/assets/../metrics", "/assets/nope.js", "/metrics/x"):
        status, _, _ = server.request(path)
        assert status == 404, path


def test_dashboard_page_and_assets(server):
    status, headers, body = server.request("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "/assets/dashboard.js" in body and "/assets/dashboard.css" in body
    for asset in ("/assets/dashboard.js", "/assets/dashboard.css"):
        status, _, body = server.request(asset)
        assert status == 200 and body


def serve_http(cli, tmp_path, address, limit_s=20):
    """Runs `gpumgr serve --http ADDRESS` on simulated devices; (returncode, stderr), or
    (None, stderr) when it was still serving after limit_s (then it is stopped)."""
    env = {k: v for k, v in os.environ.items() if k != "GPUMGR_SOCKET"}
    proc = subprocess.Popen(
        [cli, "serve", "--simulate", "1x24GiB", "--socket", str(tmp_path / "s.sock"),
         "--state-dir", str(tmp_path / "state"), "--http", address],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=limit_s)
        return proc.returncode, err
    except subprocess.TimeoutExpired:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
        return None, err


def test_serve_says_why_it_cannot_serve_http(server, tmp_path):
    """The cause, not "in use or not local": the port is in use, or the name does not resolve."""
    cli = os.environ.get("GPUMGR_CLI")
    if not cli:
        pytest.skip("GPUMGR_CLI is not set (run through ctest)")
    code, err = serve_http(cli, tmp_path / "a", f"127.0.0.1:{server.port}")
    assert code == 1, err
    assert f"port {server.port} is in use" in err, err
    assert "not local" not in err, err

    name = "gpumgr-no-such-name.localhost"
    code, err = serve_http(cli, tmp_path / "b", f"{name}:0", limit_s=10)
    if code is None:
        pytest.skip(f"{name} resolves to loopback on this host")
    assert code == 1, err
    assert f"cannot resolve '{name}'" in err, err
    assert "in use" not in err, err
