"""Fixtures for the gpu_manager tests.

Every API test runs twice: in-process (the manager's own ledger over simulated devices or the
CPU device) and through a `gpumgr serve --simulate ...` daemon (GPUMGR_SOCKET), so that the
two modes cannot drift apart. A test takes part in both through the `mode` fixture, which the
`simulate` and `two_gpus` fixtures (and tests that ask for `mode` themselves) depend on; a test
that is inherently one mode says so with ``@pytest.mark.in_process_only("why")``, and its
daemon run is skipped with that reason.

In daemon mode every GPUManager created without ``socket=`` is given a daemon configured as its
arguments ask (the simulated devices of GPUMGR_SIMULATE or ``simulate=``, max_concurrent_jobs,
memory_limit, GPUMGR_SIMULATE_PROCESSES, the fake NVML's scenario; the daemon has no placement
or queue setting of its own: best-fit and backfill): what a host whose daemon runs with those
flags gives it. Daemons are kept for the session and reused by later tests while they are
as new (no lease, no waiter, no job counted, no kind learned); a test that used one gets a
fresh one next time, so tests stay independent.

Nothing reaches a real driver (GPUMGR_NVML_LIBRARY points nowhere unless a test loads the fake
NVML from tests/fakes) and no daemon outside the test (GPUMGR_SOCKET is removed). The module is
found through PYTHONPATH=<build>/python, as the ctest registration sets it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket as sockets
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

import gpu_manager
from gpu_manager import _torch
from gpu_manager import manager as manager_module

GiB = 1024**3
MiB = 1024**2


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("GPUMGR_SOCKET", raising=False)
    monkeypatch.delenv("GPUMGR_SIMULATE", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("GPUMGR_NVML_LIBRARY", "/nonexistent/libnvidia-ml.so.1")
    monkeypatch.delenv("GPUMGR_ENFORCE", raising=False)
    manager_module._reset_gpu_manager()
    _torch._reset_for_tests()
    yield
    manager_module._reset_gpu_manager()
    _torch._reset_for_tests()


def poll_until(predicate: Callable[[], Any], timeout: float = 10.0) -> bool:
    """Polls `predicate` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    """Polls `predicate` until it holds; fails naming `what` after `timeout` seconds (generous:
    only something broken waits that long). Stands in for no fixed sleep."""
    if not poll_until(predicate, timeout):
        pytest.fail(f"waited {timeout} s for {what}")


def accepts_connections(socket: Path) -> bool:
    """Whether a daemon listens at `socket`: its file appears at bind(), before listen(), so
    that a client connecting then is refused."""
    if not socket.exists():
        return False
    with sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM) as probe:
        try:
            probe.connect(str(socket))
        except OSError:
            return False
    return True


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "in_process_only(reason): the test means one mode only; its daemon run is "
        "skipped with the reason")


# ---- the two modes ----

MODES = ["in-process", "daemon"]


def _daemon_config(max_concurrent_jobs: Any, memory_limit: Any, simulate: Any) -> tuple:
    """The daemon a GPUManager with these arguments is given in daemon mode: its arguments
    where they are valid (a bad one is refused by the client, which is what such a test
    checks), the defaults where not."""
    spec = simulate if simulate is not None else os.environ.get("GPUMGR_SIMULATE")
    if spec is not None:
        try:
            gpu_manager._core.parse_simulate_spec(spec)
        except (TypeError, ValueError):
            spec = None
    jobs = max_concurrent_jobs
    if type(jobs) is not int or not 1 <= jobs <= 10_000:
        jobs = 3
    limit = memory_limit
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 0 < limit <= 1:
        limit = 0.8
    scenario = os.environ.get("GPUMGR_FAKE_NVML_SCENARIO")
    fake = (os.environ["GPUMGR_NVML_LIBRARY"], scenario) if scenario else None
    return (spec, jobs, float(limit), os.environ.get("GPUMGR_SIMULATE_PROCESSES"), fake)


class _Daemon:
    """One `gpumgr serve` of the pool."""

    def __init__(self, binary: Path, folder: Path, config: tuple) -> None:
        spec, jobs, limit, processes, fake_nvml = config
        folder.mkdir(parents=True)
        self.config = config
        self.socket = folder / "gpumgr.sock"
        args = [str(binary), "serve", "--socket", str(self.socket), "--no-http", "--quiet",
                "--state-dir", str(folder / "state"), "--max-concurrent-jobs", str(jobs),
                "--memory-limit", repr(limit), "--poll-interval", "0.25"]
        if spec is not None:
            args += ["--simulate", spec]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("GPUMGR_") and k != "CUDA_VISIBLE_DEVICES"}
        env["GPUMGR_NVML_LIBRARY"] = "/nonexistent/libnvidia-ml.so.1"
        if processes is not None:
            env["GPUMGR_SIMULATE_PROCESSES"] = processes
        if fake_nvml is not None:
            env["GPUMGR_NVML_LIBRARY"], env["GPUMGR_FAKE_NVML_SCENARIO"] = fake_nvml
        self.log = folder / "serve.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(args, env=env, stdout=log, stderr=log)
        if not poll_until(self._listening, 10):
            self.stop()
            pytest.fail(f"gpumgr serve {' '.join(args[2:])} did not start: "
                        f"{self.log.read_text()[-500:]!r}")
        self.checked = -1  # the test that last found it as new

    def _listening(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"gpumgr serve exited: {self.log.read_text()[-500:]!r}")
        return accepts_connections(self.socket)

    def as_new(self) -> bool:
        """No lease, no waiter, no job counted, no peak, no kind learned."""
        if self.process.poll() is not None:
            return False
        core = gpu_manager._core.Manager(socket=str(self.socket))
        try:
            snap = core.snapshot()
            stats = snap["stats"]
            counted = [v for k, v in stats.items() if isinstance(v, int) and v]
            return (not snap["leases"] and not snap["queue"] and not counted
                    and stats["hold_seconds"]["count"] == 0
                    and stats["wait_seconds"]["count"] == 0
                    and all(d["peak_leased_bytes"] == 0 for d in snap["devices"])
                    and not core.estimates())
        finally:
            del core

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a test may have stopped it
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class DaemonPool:
    """The daemons of a session, one per configuration, reused while they are as new."""

    def __init__(self, binary: Path, root: Path) -> None:
        self.binary = binary
        self.root = root
        self.daemons: dict[tuple, _Daemon] = {}
        self.test = 0  # counts the tests that used the pool
        self.started = 0

    def socket_for(self, config: tuple) -> str:
        daemon = self.daemons.get(config)
        if daemon is not None and daemon.checked != self.test and not daemon.as_new():
            daemon.stop()
            daemon = None
        if daemon is None:
            self.started += 1
            daemon = _Daemon(self.binary, self.root / f"d{self.started}", config)
            self.daemons[config] = daemon
        daemon.checked = self.test
        return str(daemon.socket)

    def end_test(self) -> None:
        # A daemon that reads a test's own files is of no use to another test.
        for config in [c for c in self.daemons if c[3] is not None or c[4] is not None]:
            self.daemons.pop(config).stop()
        self.test += 1

    def close(self) -> None:
        for daemon in self.daemons.values():
            daemon.stop()
        self.daemons.clear()


@pytest.fixture(scope="session")
def daemon_pool() -> Iterator[DaemonPool]:
    binary = gpumgr_binary()
    if binary is None or not binary.exists():
        pytest.skip("the gpumgr binary (target gpumgr_cli) is not built next to the module: "
                    "the daemon mode cannot run")
    # A short folder: a Unix socket's path has at most 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="gpumgr-py-"))
    pool = DaemonPool(binary, root)
    yield pool
    pool.close()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest, isolated_environment: None,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """'in-process' or 'daemon': the test runs once in each. In daemon mode every GPUManager
    created without socket= gets the pool's daemon for its arguments."""
    if request.param == "in-process":
        yield request.param
        return
    marker = request.node.get_closest_marker("in_process_only")
    if marker is not None:
        pytest.skip("in-process only: " + (marker.args[0] if marker.args else "one mode"))
    pool: DaemonPool = request.getfixturevalue("daemon_pool")
    original = gpu_manager.GPUManager.__init__

    def routed(self: Any, device: Any = "auto", max_concurrent_jobs: Any = 3,
               memory_limit: Any = 0.8, **kwargs: Any) -> None:
        if kwargs.get("socket") is None:
            config = _daemon_config(max_concurrent_jobs, memory_limit, kwargs.get("simulate"))
            kwargs["socket"] = pool.socket_for(config)
        original(self, device, max_concurrent_jobs, memory_limit, **kwargs)

    monkeypatch.setattr(gpu_manager.GPUManager, "__init__", routed)
    try:
        yield request.param
    finally:
        pool.end_test()


@pytest.fixture
def daemon_for(mode: str, request: pytest.FixtureRequest) -> Callable[..., Optional[str]]:
    """daemon_for(spec, max_concurrent_jobs=3, memory_limit=0.8): for managers in child
    processes, the socket (GPUMGR_SOCKET) of the pool's daemon so configured in daemon mode;
    None in-process."""
    if mode == "in-process":
        return lambda *args, **kwargs: None
    pool: DaemonPool = request.getfixturevalue("daemon_pool")

    def socket(spec: str, max_concurrent_jobs: int = 3, memory_limit: float = 0.8) -> str:
        return pool.socket_for((spec, max_concurrent_jobs, float(memory_limit), None, None))

    return socket


@pytest.fixture
def simulate(monkeypatch: pytest.MonkeyPatch, mode: str) -> Callable[[str], None]:
    """simulate("2x24GiB") sets GPUMGR_SIMULATE for the test (in daemon mode: the daemon's
    --simulate)."""

    def set_spec(spec: str) -> None:
        monkeypatch.setenv("GPUMGR_SIMULATE", spec)

    return set_spec


@pytest.fixture
def two_gpus(simulate: Callable[[str], None]) -> gpu_manager.GPUManager:
    """The issue's reference setup: 2x24GiB, memory_limit 0.8, max_concurrent_jobs 3."""
    simulate("2x24GiB")
    return gpu_manager.GPUManager(max_concurrent_jobs=3, memory_limit=0.8)


#: What the fake torch says each device has: not the simulated devices' 24 GiB, so that a
#: fraction computed against the wrong total shows.
FAKE_TORCH_TOTAL = 40 * GiB


class FakeCuda:
    """The slice of torch.cuda that gpu_manager calls, recording what it was asked.

    CUDA starts initialised (``initialized``); with ``initialized = False`` it behaves as torch
    before the first CUDA call: ``_lazy_call`` queues, ``init()`` runs the queue, and the calls
    that would initialise CUDA (set_per_process_memory_fraction, get_device_properties) fail
    the test, since gpu_manager must never initialise CUDA on torch's behalf.
    """

    class OutOfMemoryError(RuntimeError):
        pass

    def __init__(self, count: int = 2, total: int = FAKE_TORCH_TOTAL) -> None:
        self.count = count
        self.total = total
        self.current = 0
        self.initialized = True
        self.queued: list[Callable[[], None]] = []
        self.calls: list[tuple[str, int]] = []
        #: every set_per_process_memory_fraction call, as (device, fraction)
        self.fraction_calls: list[tuple[int, float]] = []
        self.fractions: dict[int, float] = {}
        #: calls made before CUDA was initialised (each would have initialised it)
        self.premature: list[str] = []
        self.allocated = {i: 0 for i in range(count)}
        self.reserved = {i: 0 for i in range(count)}
        self.peak = {i: 0 for i in range(count)}
        self.peak_reserved = {i: 0 for i in range(count)}

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return self.initialized

    def _lazy_call(self, fn: Callable[[], None]) -> None:
        if self.initialized:
            fn()
        else:
            self.queued.append(fn)

    def init(self) -> None:
        """torch's lazy CUDA initialisation: runs the queued calls."""
        if self.initialized:
            return
        self.initialized = True
        queued, self.queued = self.queued, []
        for fn in queued:
            fn()

    def _lazy_init_check(self, what: str) -> None:
        if not self.initialized:
            self.premature.append(what)
            raise AssertionError(f"{what} would initialise CUDA")

    def set_per_process_memory_fraction(self, fraction: float, device: int) -> None:
        self._lazy_init_check("set_per_process_memory_fraction")
        if not isinstance(fraction, float) or not 0 <= fraction <= 1:
            raise ValueError(f"bad fraction {fraction!r}")  # torch's own checks
        if not 0 <= device < self.count:
            raise ValueError(f"bad device {device}")
        self.fraction_calls.append((device, fraction))
        self.fractions[device] = fraction

    def get_device_properties(self, index: int) -> Any:
        self._lazy_init_check("get_device_properties")
        return types.SimpleNamespace(total_memory=self.total, name="Fake GPU")

    def max_memory_reserved(self, index: int) -> int:
        return self.peak_reserved[index]

    def device_count(self) -> int:
        return self.count

    @contextlib.contextmanager
    def device(self, index: int) -> Iterator[None]:
        previous, self.current = self.current, index
        try:
            yield
        finally:
            self.current = previous

    def empty_cache(self) -> None:
        self.calls.append(("empty_cache", self.current))

    def synchronize(self, index: int) -> None:
        self.calls.append(("synchronize", index))

    def memory_allocated(self, index: int) -> int:
        return self.allocated[index]

    def memory_reserved(self, index: int) -> int:
        return self.reserved[index]

    def max_memory_allocated(self, index: int) -> int:
        return self.peak[index]

    def use(self, index: int, nbytes: int) -> None:
        """Models a tensor of nbytes on device index (allocated, reserved, peak)."""
        self.allocated[index] += nbytes
        self.reserved[index] = max(self.reserved[index], self.allocated[index] + 2 * MiB)
        self.peak[index] = max(self.peak[index], self.allocated[index])
        self.peak_reserved[index] = max(self.peak_reserved[index], self.reserved[index])

    def free(self, index: int, nbytes: int) -> None:
        self.allocated[index] -= nbytes


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    """A fake `torch` in sys.modules with two CUDA devices; returns its torch.cuda."""
    cuda = FakeCuda()
    module = types.ModuleType("torch")
    module.cuda = cuda  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", module)
    return cuda


def _fake_nvml_path() -> Path | None:
    env = os.environ.get("GPUMGR_TEST_FAKE_NVML")
    if env:
        return Path(env)
    # <build>/python/gpu_manager/__init__.py -> <build>/tests/fakes/libfake_nvml.so
    guess = Path(gpu_manager.__file__).resolve().parents[2] / "tests" / "fakes" / "libfake_nvml.so"
    return guess if guess.exists() else None


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[str], Path]:
    """fake_nvml(scenario_text) loads tests/fakes' libnvidia-ml with that scenario; returns
    the scenario file (tests may rewrite it and call reload_fake_nvml)."""
    path = _fake_nvml_path()
    if path is None or not path.exists():
        pytest.skip("the fake libnvidia-ml (tests/fakes, target fake_nvml) is not built")

    def load(scenario: str) -> Path:
        file = tmp_path / "scenario.txt"
        file.write_text(scenario)
        monkeypatch.setenv("GPUMGR_NVML_LIBRARY", str(path))
        monkeypatch.setenv("GPUMGR_FAKE_NVML_SCENARIO", str(file))
        return file

    return load


def reload_fake_nvml() -> None:
    """Makes the loaded fake NVML re-read its scenario file."""
    import ctypes

    path = _fake_nvml_path()
    assert path is not None
    lib = ctypes.CDLL(str(path), mode=os.RTLD_NOLOAD | os.RTLD_NOW)
    lib.fake_nvml_reload()


def state(manager: gpu_manager.GPUManager) -> dict[str, Any]:
    """What a bad call must not change: leases, queue, per-device leased memory, statistics."""
    snap = manager.snapshot()
    stats = {k: v for k, v in snap["stats"].items() if k not in ("hold_seconds", "wait_seconds")}
    return {
        "leases": sorted((l["job_id"], tuple(l["devices"]), l["bytes"]) for l in snap["leases"]),
        "queue": [q["job_id"] for q in snap["queue"]],
        "leased": [d["leased_bytes"] for d in snap["devices"]],
        "stats": stats,
    }


def gpumgr_binary() -> Path | None:
    """The gpumgr command built beside the module (GPUMGR_TEST_GPUMGR_BIN overrides)."""
    env = os.environ.get("GPUMGR_TEST_GPUMGR_BIN")
    if env:
        return Path(env)
    guess = Path(gpu_manager.__file__).resolve().parents[2] / "src" / "cli" / "gpumgr"
    return guess if guess.exists() else None


@pytest.fixture
def start_serve(tmp_path: Path):
    """Starts `gpumgr serve` on tmp_path/gpumgr.sock with its state in tmp_path/state and these
    extra arguments (and environment); returns the socket path once it listens (the process:
    `start.process`). Every daemon started is stopped at the end of the test. Skips where the
    binary is not built."""
    binary = gpumgr_binary()
    if binary is None or not binary.exists():
        pytest.skip("the gpumgr binary (target gpumgr_cli) is not built next to the module")
    started: list[subprocess.Popen] = []

    def start(*args: str, env: dict | None = None) -> Path:
        socket = tmp_path / "gpumgr.sock"
        proc = subprocess.Popen([str(binary), "serve", "--socket", str(socket), "--no-http",
                                 "--quiet", "--state-dir", str(tmp_path / "state"), *args],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        started.append(proc)
        start.process = proc  # type: ignore[attr-defined]
        if not poll_until(lambda: accepts_connections(socket) or proc.poll() is not None, 10) \
                or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"gpumgr serve did not start: {proc.communicate()[1][-500:]!r}")
        return socket

    yield start
    for proc in started:
        proc.send_signal(signal.SIGCONT)  # a test may have stopped it
        proc.terminate()
        proc.wait(timeout=10)
