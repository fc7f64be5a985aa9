"""`gpumgr slurm conf` and `gpumgr slurm plugstack` through the real binary."""
import os
import subprocess
import tempfile

from cli_helpers import answers, eventually

GPUMGR = os.environ.get("GPUMGR_BIN", "gpumgr")
PLUGIN = os.environ.get("GPUMGR_SPANK", "")


def gpumgr(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUMGR_SIM")}
    env.pop("GPUMGR_SOCKET", None)
    return subprocess.run([GPUMGR, *args], capture_output=True, text=True, env=env, timeout=30)


def slurm_lines(text):
    return [line for line in text.splitlines() if not line.startswith("#")]


def test_conf_for_simulated_devices():
    out = gpumgr("slurm", "conf", "--simulate", "2x24GiB", "--node", "n1")
    assert out.returncode == 0, out.stderr
    assert slurm_lines(out.stdout) == [
        "NodeName=n1 Name=gpu File=/dev/nvidia0",
        "NodeName=n1 Name=gpu File=/dev/nvidia1",
        "NodeName=n1 Name=shard Count=19 File=/dev/nvidia0",
        "NodeName=n1 Name=shard Count=19 File=/dev/nvidia1",
    ]
    assert out.stdout.splitlines()[-1] == "# NodeName=n1 Gres=gpu:2,shard:38"


def test_conf_reads_the_daemons_memory_limit():
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "gpumgr.sock")
        daemon = subprocess.Popen(
            [GPUMGR, "serve", "--socket", sock, "--no-http", "--simulate", "1x24GiB",
             "--memory-limit", "0.5", "--state-dir", os.path.join(tmp, "state")],
            stderr=subprocess.DEVNULL)
        try:
            assert eventually(lambda: answers(sock) or daemon.poll() is not None)
            out = gpumgr("slurm", "conf", "--socket", sock, "--unit", "512MiB",
                         "--file-pattern", "/dev/gpu%d-x")
            assert out.returncode == 0, out.stderr
            # 24 GiB at the daemon's 0.5 (not the default 0.8): 12 GiB, 24 half-GiB shards.
            assert slurm_lines(out.stdout) == ["Name=gpu File=/dev/gpu0-x",
                                               "Name=shard Count=24 File=/dev/gpu0-x"]
            assert out.stdout.splitlines()[-1] == "# Gres=gpu:1,shard:24"
        finally:
            daemon.terminate()
            daemon.wait(timeout=15)


def test_conf_refuses_bad_input_naming_it():
    for args, word in ((["--unit", "0"], "--unit"), (["--unit", "pints"], "pints"),
                       (["--file-pattern", "/dev/nvidia"], "%d"),
                       (["--file-pattern", "dev/nvidia%d"], "absolute"),
                       (["--node", "a b"], "node name"),
                       (["--unit", "64GiB"], "smaller --unit")):
        out = gpumgr("slurm", "conf", "--simulate", "1x24GiB", *args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert word in out.stderr, (args, out.stderr)
        assert out.stdout == ""


def test_plugstack_line():
    out = gpumgr("slurm", "plugstack", "--socket", "/run/gpumgr/%n.sock", "--optional")
    if not PLUGIN or not os.path.exists(PLUGIN):
        assert out.returncode == 3 and "libslurm-dev" in out.stderr
        return
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["optional", os.path.realpath(PLUGIN),
                                  "socket=/run/gpumgr/%n.sock", "unit=GiB", "optional"]
    out = gpumgr("slurm", "plugstack")
    assert out.stdout.split()[0] == "required"
    assert out.stdout.split()[2] == "socket=/run/gpumgr/gpumgr.sock"
    for bad in ("relative.sock", "/run/%x.sock", "/run/a b.sock"):
        out = gpumgr("slurm", "plugstack", "--socket", bad)
        assert out.returncode == 2, (bad, out.stdout)
        assert out.stdout == ""
