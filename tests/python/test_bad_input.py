"""Bad input from Python: each gets a clear error naming the problem and changes no state."""

from __future__ import annotations

import math
import threading

import pytest

from gpu_manager import (DuplicateJobError, GPUCapacityError, GPUManager, GPUManagerError,
                         LeasePreempted)
from conftest import state, wait_until

BAD_VRAM = [
    (0, ValueError, "must be a positive number of MiB, got 0"),
    (-5, ValueError, "got -5"),
    (math.nan, TypeError, "int number of MiB, got nan"),
    (100.5, TypeError, r"got 100\.5 \(float\)"),
    (1000.0, TypeError, r"\(float\)"),
    (True, TypeError, r"got True \(bool\)"),
    ("100", TypeError, r"got '100' \(str\)"),
    (None, TypeError, "got None"),
]


@pytest.mark.parametrize("value,error,message", BAD_VRAM)
def test_bad_vram_everywhere(two_gpus, value, error, message):
    two_gpus.allocate_job("keeps", 1000)
    before = state(two_gpus)
    with pytest.raises(error, match=message):
        two_gpus.can_process_job(value)
    with pytest.raises(error, match=message):
        two_gpus.allocate_job("bad", value)
    with pytest.raises(error, match=message):
        two_gpus.managed_generation("bad", value)
    assert state(two_gpus) == before


def test_vram_beyond_every_device(two_gpus):
    before = state(two_gpus)
    assert two_gpus.can_process_job(10**6) is False
    with pytest.raises(GPUCapacityError, match="can never fit") as err:
        two_gpus.allocate_job("huge", 10**6)
    assert err.value.code == "never_fits"
    # A waiting request that can never fit fails at once rather than waiting forever.
    timer = threading.Timer(5, lambda: two_gpus.cancel("huge-wait"))
    timer.start()
    try:
        with pytest.raises(GPUCapacityError, match="can never fit"):
            with two_gpus.managed_generation("huge-wait", 10**6, timeout=None):
                pass
    finally:
        timer.cancel()
    with pytest.raises(ValueError, match="beyond any device"):
        two_gpus.can_process_job(2**60)
    after = state(two_gpus)
    # Refusals are counted (jobs_rejected); nothing else changes.
    assert after["stats"].pop("jobs_rejected") == before["stats"].pop("jobs_rejected") + 2
    assert after == before


@pytest.mark.parametrize("device,message", [
    ("cuda:99", r"device 'cuda:99' does not exist: there are 2 GPUs"),
    ("gpu", "unknown device 'gpu': use auto, cuda, cuda:N or cpu"),
    ("", "empty device"),
    ("cuda:-1", "bad device 'cuda:-1'"),
    ("cuda:x", "bad device 'cuda:x'"),
])
def test_unknown_devices(two_gpus, device, message):
    with pytest.raises(ValueError, match=message):
        GPUManager(device=device)


def test_device_of_the_wrong_type(two_gpus):
    with pytest.raises(TypeError, match="device must be a str"):
        GPUManager(device=0)


@pytest.mark.parametrize("limit,error", [
    (0, ValueError), (1.5, ValueError), (math.nan, ValueError), (-0.1, ValueError),
    (math.inf, ValueError), ("0.5", TypeError), (True, TypeError),
])
def test_memory_limit_out_of_range(two_gpus, limit, error):
    with pytest.raises(error, match="memory_limit"):
        GPUManager(memory_limit=limit)


@pytest.mark.parametrize("jobs,error", [(0, ValueError), (-2, ValueError), (2.5, TypeError),
                                        (None, TypeError)])
def test_max_concurrent_jobs(two_gpus, jobs, error):
    with pytest.raises(error, match="max_concurrent_jobs"):
        GPUManager(max_concurrent_jobs=jobs)


@pytest.mark.parametrize("timeout,error", [(-1, ValueError), (math.nan, ValueError),
                                           ("1", TypeError), (True, TypeError)])
def test_bad_timeouts(two_gpus, timeout, error):
    before = state(two_gpus)
    with pytest.raises(error, match="timeout"):
        two_gpus.managed_generation("t", 100, timeout=timeout)
    with pytest.raises(error, match="default_timeout"):
        GPUManager(default_timeout=timeout)
    assert state(two_gpus) == before


@pytest.mark.parametrize("job_id,error,message", [
    ("", ValueError, "must not be empty"),
    (None, TypeError, "job_id must be a str"),
    (42, TypeError, "job_id must be a str"),
    ("a\nb", ValueError, "control characters"),
])
def test_bad_job_ids(two_gpus, job_id, error, message):
    before = state(two_gpus)
    with pytest.raises(error, match=message):
        two_gpus.allocate_job(job_id, 100)
    with pytest.raises(error, match=message):
        with two_gpus.managed_generation(job_id, 100):
            pass
    assert state(two_gpus) == before


def test_duplicate_job_ids(two_gpus):
    lease = two_gpus.allocate_job("dup", 1000)
    before = state(two_gpus)
    with pytest.raises(DuplicateJobError, match="dup") as err:
        two_gpus.allocate_job("dup", 2000)
    assert isinstance(err.value, ValueError) and isinstance(err.value, GPUManagerError)
    assert err.value.code == "already_exists"
    with pytest.raises(DuplicateJobError):
        with two_gpus.managed_generation("dup", 500, timeout=1):
            pass
    assert state(two_gpus) == before
    assert lease.held and lease.memory_mb == 1000
    lease.release()


def test_release_of_unknown_jobs(two_gpus):
    before = state(two_gpus)
    for job_id in ("unknown", "", None, 7):
        assert two_gpus.cleanup_after_job(job_id) is False
    assert two_gpus._core.release("unknown") is False
    assert state(two_gpus) == before


@pytest.mark.parametrize("spec,message", [
    ("banana", "bad device spec 'banana'"),
    ("0GiB", "cannot have 0 bytes"),
    ("2x", "empty size"),
    ("24GiB,", "empty entry"),
    ("-1GiB", "bad size"),
    ("3x24Mb", "24Mb"),
])
def test_malformed_simulate_specs(simulate, mode, spec, message):
    with pytest.raises(ValueError, match=message):
        GPUManager(simulate=spec)
    if mode == "in-process":  # through the daemon, its own --simulate is what counts
        simulate(spec)
        with pytest.raises(ValueError, match=message):
            GPUManager()


@pytest.mark.in_process_only("through the daemon its own queue policy applies (gpumgr serve)")
def test_queue_policies(simulate):
    simulate("2x24GiB")
    for name in ("backfill", "fifo", "greedy"):
        assert GPUManager(queue=name).snapshot()["config"]["queue"] == name
    with pytest.raises(ValueError,
                       match="unknown queue policy 'lifo': use backfill, fifo or greedy"):
        GPUManager(queue="lifo")


# ---- revocable leases: resident models and preemptible blocks ----

BAD_RESIDENT_NAMES = [
    ("", ValueError, "resident name must not be empty"),
    ("llama\x1b[2J", ValueError, "must not contain control characters"),
    ("a\nb", ValueError, "must not contain control characters"),
    ("x" * 241, ValueError, "241 bytes long; the limit is 240"),
    (None, TypeError, "resident name must be a str"),
    (7, TypeError, "resident name must be a str"),
]


@pytest.mark.parametrize("name,error,message", BAD_RESIDENT_NAMES)
def test_bad_resident_names(two_gpus, name, error, message):
    two_gpus.allocate_job("keeps", 1000)
    before = state(two_gpus)
    with pytest.raises(error, match=message):
        two_gpus.keep_resident(name, 1000)
    assert state(two_gpus) == before


def test_bad_resident_arguments(two_gpus):
    before = state(two_gpus)
    with pytest.raises(TypeError, match="unload must be callable"):
        two_gpus.keep_resident("m", 1000, unload="not a function")
    with pytest.raises(ValueError, match="must be a positive number of MiB"):
        two_gpus.keep_resident("m", 0)
    for grace in (-1, math.nan, math.inf, 10**6):
        with pytest.raises(ValueError, match="revoke_grace must be a finite number"):
            two_gpus.keep_resident("m", 1000, revoke_grace=grace)
    with pytest.raises(TypeError, match="revoke_grace must be a number"):
        two_gpus.keep_resident("m", 1000, revoke_grace="5")
    assert state(two_gpus) == before


BAD_BESIDE = [
    ("gone", ValueError, "no resident 'gone' to run beside"),
    ("", ValueError, "resident name must not be empty"),
    ("llama\x1b[2J", ValueError, "must not contain control characters"),
    (7, TypeError, "resident must be a ResidentModel, a resident's name or None"),
]


@pytest.mark.parametrize("resident,error,message", BAD_BESIDE)
def test_bad_resident_to_run_beside(two_gpus, resident, error, message):
    model = two_gpus.keep_resident("llama", 1000)
    before = state(two_gpus)
    with pytest.raises(error, match=message):
        with two_gpus.managed_generation("bad", 1000, timeout=0, resident=resident):
            pass
    assert state(two_gpus) == before
    # A model released already is no resident to run beside either.
    model.release()
    before = state(two_gpus)
    with pytest.raises(ValueError, match="no resident 'llama' to run beside"):
        with two_gpus.managed_generation("bad", 1000, timeout=0, resident=model):
            pass
    assert state(two_gpus) == before


def test_keep_resident_twice_with_one_name(two_gpus):
    model = two_gpus.keep_resident("llama", 1000)
    before = state(two_gpus)
    with pytest.raises(DuplicateJobError, match="already"):
        two_gpus.keep_resident("llama", 2000)
    assert state(two_gpus) == before
    model.release()


def test_use_of_a_revoked_or_released_resident(two_gpus):
    model = two_gpus.keep_resident("llama", 1000)
    two_gpus.revoke(model.job_id)  # no unload callback: released once the holder hears
    wait_until(lambda: model.revoked, "the resident to hear of its revocation")
    wait_until(lambda: not [l for l in two_gpus.snapshot()["leases"]
                            if l["job_id"] == model.job_id], "the resident's lease to go")
    before = state(two_gpus)
    with pytest.raises(LeasePreempted, match="revoked"):
        model.use()
    other = two_gpus.keep_resident("other", 1000)
    other.release()
    with pytest.raises(GPUManagerError, match="released"):
        other.use()
    assert state(two_gpus)["leases"] == before["leases"]


def test_bad_preemptible_arguments(two_gpus):
    before = state(two_gpus)
    with pytest.raises(ValueError, match="need preemptible=True"):
        two_gpus.managed_generation("p", 1000, on_preempt=print)
    with pytest.raises(TypeError, match="on_preempt must be callable"):
        two_gpus.managed_generation("p", 1000, preemptible=True, on_preempt=3)
    with pytest.raises(ValueError, match="revoke_grace must be a finite number"):
        two_gpus.managed_generation("p", 1000, preemptible=True, revoke_grace=math.nan)
    with pytest.raises(TypeError, match="preemptible"):
        two_gpus.managed_generation("p", 1000, preemptible="yes")
    with pytest.raises(GPUManagerError, match="cannot be revoked"):
        two_gpus.allocate_job("plain", 1000)
        two_gpus.revoke("plain")
    two_gpus.cleanup_after_job("plain")
    with pytest.raises(ValueError, match="no active lease for job 'ghost'"):
        two_gpus.revoke("ghost")
    after = state(two_gpus)
    for snap in (before, after):
        snap["stats"].pop("jobs_succeeded", None)
        snap["stats"].pop("jobs_processed", None)
        snap["stats"].pop("peak_active_jobs", None)
    assert after == before
