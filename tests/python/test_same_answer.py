"""The same answer in-process and through the daemon: every argument is checked alike, with
one message naming the argument and the accepted range, and every device selector means the
same thing. Each test runs in both modes (the `mode` fixture, see conftest.py)."""

from __future__ import annotations

import math
import warnings

import pytest

from gpu_manager import DeviceUnavailableError, GPUManager
from conftest import MiB, state

INT_RANGE = "[-2147483648, 2147483647]"


# ---- device selectors ----

def test_a_device_that_does_not_exist_is_refused_at_creation(two_gpus):
    for device in ("cuda:2", "cuda:99"):
        with pytest.raises(ValueError) as err:
            GPUManager(device=device)
        assert str(err.value) == (f"device '{device}' does not exist: there are 2 GPUs "
                                  "(cuda:0..cuda:1)")
    last = GPUManager(device="cuda:1")  # the last one that does
    with last.managed_generation("last", 100) as lease:
        assert (lease.device, lease.device_index) == ("cuda:1", 1)


def test_cpu_leases_host_memory_never_a_gpu(two_gpus):
    """'cpu' is host memory as one device in both modes: a lease there takes nothing of the
    GPUs (through a daemon that manages GPUs, host memory is this process's own)."""
    cpu = GPUManager(device="cpu", memory_limit=1.0)
    assert (cpu.device, cpu.cuda_available) == ("cpu", False)
    assert cpu.selection_note.startswith("cpu: host memory")
    (device,) = cpu.get_gpu_stats()["devices"]
    assert (device["kind"], device["device"]) == ("cpu", "cpu")
    with cpu.managed_generation("on-cpu", 100) as lease:
        assert (lease.device, lease.device_index, lease.devices) == ("cpu", 0, [0])
        assert cpu.get_memory_info()["leased"] == 100 * MiB
        gpus = two_gpus.snapshot()
        assert gpus["leases"] == [] and [d["leased_bytes"] for d in gpus["devices"]] == [0, 0]
        # The GPUs' whole budget is still there.
        assert two_gpus.can_process_job(19660)
    assert cpu.get_gpu_stats()["jobs_succeeded"] == 1


def test_cpu_on_a_host_without_gpus(mode):
    """No GPU anywhere (no NVIDIA driver, nothing simulated): 'auto' and 'cpu' are host memory,
    'cuda' is refused, in both modes."""
    for device in ("auto", "cpu"):
        m = GPUManager(device=device, memory_limit=1.0)
        assert (m.device, m.cuda_available) == ("cpu", False)
        with m.managed_generation(f"job-{device}", 64) as lease:
            assert lease.device == "cpu"
        assert m.get_gpu_stats()["devices"][0]["kind"] == "cpu"
    for device in ("cuda", "cuda:0"):
        with pytest.raises(DeviceUnavailableError, match=f"device '{device}' asked for a GPU "
                                                         "but none is usable") as err:
            GPUManager(device=device)
        assert err.value.code == "unavailable"


# ---- numbers out of range: one check, one message ----

def _generation(manager, **kwargs):
    with manager.managed_generation("bad", 100, **kwargs):
        pass


@pytest.mark.parametrize("timeout", [1e300, 1e10, 1e9 + 1, -1.0, math.nan])
def test_timeouts_out_of_range(two_gpus, timeout):
    before = state(two_gpus)
    with pytest.raises(ValueError) as err:
        _generation(two_gpus, timeout=timeout)
    assert str(err.value) == ("timeout must be None, inf or a number of seconds in [0, 1e9], "
                              f"got {timeout!r}")
    with pytest.raises(ValueError) as err:
        GPUManager(default_timeout=timeout)
    assert str(err.value) == ("default_timeout must be None, inf or a number of seconds in "
                              f"[0, 1e9], got {timeout!r}")
    assert state(two_gpus) == before


@pytest.mark.parametrize("timeout", [1e9, math.inf, None, 0, 5])
def test_timeouts_in_range_are_granted(two_gpus, timeout):
    with two_gpus.managed_generation("ok", 100, timeout=timeout) as lease:
        assert lease.held
    assert GPUManager(default_timeout=timeout).default_timeout == (
        None if timeout in (None, math.inf) else float(timeout))


@pytest.mark.parametrize("gpus", [0, -1, 3, 1024, 2000, 2**40, -2**40])
def test_gpus_out_of_range(two_gpus, gpus):
    two_gpus.allocate_job("keeps", 1000)
    before = state(two_gpus)
    with pytest.raises(ValueError) as err:
        two_gpus.allocate_job("bad", 100, gpus=gpus)
    assert str(err.value) == f"gpus must be between 1 and 2 (the number of devices), got {gpus}"
    assert state(two_gpus) == before


@pytest.mark.parametrize("priority", [2**31, -2**31 - 1, 2**40, -2**40, 2**63])
def test_priority_out_of_range(two_gpus, priority):
    before = state(two_gpus)
    message = f"priority must be an int in {INT_RANGE}, got {priority}"
    with pytest.raises(ValueError) as err:
        two_gpus.allocate_job("bad", 100, priority=priority)
    assert str(err.value) == message
    with pytest.raises(ValueError) as err:
        _generation(two_gpus, priority=priority)
    assert str(err.value) == message
    assert state(two_gpus) == before


@pytest.mark.parametrize("priority", [2**31 - 1, -2**31])
def test_priority_at_the_ends_of_the_range(two_gpus, priority):
    with two_gpus.managed_generation("edge", 100, priority=priority) as lease:
        assert lease.priority == priority


@pytest.mark.parametrize("jobs", [2**31, 2**40, 2**63])
def test_max_concurrent_jobs_too_large(two_gpus, jobs):
    with pytest.raises(ValueError) as err:
        GPUManager(max_concurrent_jobs=jobs)
    assert str(err.value) == f"max_concurrent_jobs must be at most 2147483647, got {jobs}"


@pytest.mark.parametrize("device", [2, 7, -1, 2**40])
def test_synchronize_a_device_that_does_not_exist(two_gpus, device):
    with pytest.raises(ValueError) as err:
        two_gpus.synchronize(device)
    assert str(err.value) == f"device {device} does not exist; devices are 0..1"


@pytest.mark.parametrize("argument", ["placement", "queue"])
def test_policies_of_the_wrong_type(two_gpus, argument):
    with pytest.raises(TypeError) as err:
        GPUManager(**{argument: 5})
    assert str(err.value).startswith(f"{argument} must be a str")


@pytest.mark.parametrize("spec,message", [
    ("banana", "bad device spec 'banana'"),
    ("0GiB", "cannot have 0 bytes"),
    ("2x", "empty size"),
])
def test_a_malformed_simulate_argument_is_refused(two_gpus, spec, message):
    with pytest.raises(ValueError, match=message):
        GPUManager(simulate=spec)


def test_a_simulate_argument_the_daemon_does_not_use_is_reported(two_gpus, mode):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = GPUManager(simulate="2x24GiB")
    said = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if mode == "daemon":
        assert said == ["simulate='2x24GiB' is not used: the daemon's devices are its own "
                        "(gpumgr serve --simulate)"]
    else:
        assert said == []
    assert len(m.get_gpu_stats()["devices"]) == 2

