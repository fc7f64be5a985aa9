"""Fixtures for the gpu_manager tests.

Every test runs in-process against simulated devices (GPUMGR_SIMULATE) or the CPU device,
never a daemon (GPUMGR_SOCKET is removed) and never a real driver (GPUMGR_NVML_LIBRARY points
nowhere unless a test loads the fake NVML from tests/fakes). The module is found through
PYTHONPATH=<build>/python, as the ctest registration sets it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable, Iterator

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


@pytest.fixture
def simulate(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """simulate("2x24GiB") sets GPUMGR_SIMULATE for the test."""

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
        deadline = time.monotonic() + 10
        while not socket.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"gpumgr serve did not start: {proc.communicate()[1][-500:]!r}")
            time.sleep(0.02)
        return socket

    yield start
    for proc in started:
        proc.send_signal(signal.SIGCONT)  # a test may have stopped it
        proc.terminate()
        proc.wait(timeout=10)
