"""The behaviours the original Python GPUManager suite covered, against simulated devices."""

from __future__ import annotations

import threading
import time
import warnings

import pytest

import gpu_manager
from gpu_manager import (
    GPUCapacityError,
    GPUManager,
    GPUMemoryManager,
    QueueTimeoutError,
    get_gpu_manager,
)
from conftest import GiB, MiB, poll_until, reload_fake_nvml, wait_until

CAPACITY_24G = int(0.8 * 24 * GiB)  # floor(0.8 x 24 GiB) = 20615843020 bytes = 19660.8 MiB


def when_queued(manager: GPUManager, job_id: str, action) -> threading.Thread:
    """Runs `action` on a thread of its own once `job_id` waits in the manager's queue (or
    after 10 s, when it never did: the waiter's own assertions then say so)."""

    def run():
        poll_until(lambda: job_id in [w["job_id"] for w in manager.snapshot()["queue"]])
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


# ---- initialization, singleton, devices ----

def test_initialization_defaults(simulate):
    simulate("2x24GiB")
    m = GPUManager()
    assert (m.device, m.max_concurrent_jobs, m.memory_limit) == ("cuda", 3, 0.8)
    assert m.default_timeout is None
    stats = m.get_gpu_stats()
    assert stats["active_jobs"] == 0
    assert stats["jobs_processed"] == 0 and stats["jobs_failed"] == 0
    assert stats["max_concurrent_jobs"] == 3 and stats["memory_limit"] == 0.8


def test_initialization_custom(simulate):
    simulate("24GiB")
    m = GPUManager(device="cuda:0", max_concurrent_jobs=5, memory_limit=0.5, default_timeout=2)
    assert (m.device, m.max_concurrent_jobs, m.memory_limit, m.default_timeout) == (
        "cuda:0", 5, 0.5, 2.0)
    assert m.get_memory_info()["capacity"] == 12 * GiB
    with pytest.raises(AttributeError):
        m.max_concurrent_jobs = 4  # fixed at creation: setting it would silently do nothing


def test_singleton_same_object_and_thread_safe(simulate):
    simulate("2x24GiB")
    seen = []
    barrier = threading.Barrier(8)

    def get():
        barrier.wait()
        seen.append(get_gpu_manager())

    threads = [threading.Thread(target=get) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 8 and all(s is seen[0] for s in seen)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get_gpu_manager() is seen[0]  # same arguments: no warning


def test_singleton_warns_on_different_arguments(simulate):
    simulate("2x24GiB")
    first = get_gpu_manager(max_concurrent_jobs=3)
    with pytest.warns(RuntimeWarning, match=r"max_concurrent_jobs: 3 in use, 5 requested"):
        again = get_gpu_manager(max_concurrent_jobs=5)
    assert again is first and again.max_concurrent_jobs == 3


def test_cuda_availability_check(simulate):
    simulate("2x24GiB")
    assert GPUManager().cuda_available is True
    assert GPUManager(device="cpu").cuda_available is False


def test_device_selection_auto_with_gpus(simulate):
    simulate("2x24GiB")
    m = GPUManager(device="auto")
    assert m.device == "cuda"
    assert len(m.get_gpu_stats()["devices"]) == 2


def test_device_selection_auto_without_gpu(mode):
    m = GPUManager(device="auto", memory_limit=1.0)
    assert m.device == "cpu"
    assert "no usable GPU" in m.selection_note


def test_device_selection_cuda_pinned(simulate):
    simulate("2x24GiB")
    m = GPUManager(device="cuda:1")
    assert m.device == "cuda:1"
    with m.managed_generation("pinned", 1000) as lease:
        assert lease.device == "cuda:1" and lease.device_index == 1
    stats = m.get_gpu_stats()
    assert [d["index"] for d in stats["devices"]] == [1]  # a pinned manager shows its device


def test_device_selection_cpu(simulate):
    simulate("2x24GiB")
    m = GPUManager(device="cpu", memory_limit=1.0)
    assert m.device == "cpu"
    with m.managed_generation("on-cpu", 10) as lease:
        assert lease.device == "cpu"
    assert m.get_gpu_stats()["devices"][0]["kind"] == "cpu"


# ---- statistics and memory ----

def test_gpu_stats_values(two_gpus):
    stats = two_gpus.get_gpu_stats()
    assert stats["device"] == "cuda"
    assert stats["device_name"] == "Simulated GPU (24 GiB)"
    assert stats["total_memory"] == 48 * GiB
    assert stats["used_memory"] == 0 and stats["free_memory"] == 48 * GiB
    assert stats["leased_memory"] == 0
    assert stats["capacity"] == 2 * CAPACITY_24G
    assert stats["utilization"] == 0.0
    assert [d["index"] for d in stats["devices"]] == [0, 1]
    assert [d["device"] for d in stats["devices"]] == ["cuda:0", "cuda:1"]
    with two_gpus.managed_generation("a", 1000):
        with two_gpus.managed_generation("b", 2000):
            stats = two_gpus.get_gpu_stats()
            assert stats["active_jobs"] == 2
            assert stats["leased_memory"] == 3000 * MiB
    stats = two_gpus.get_gpu_stats()
    assert (stats["active_jobs"], stats["jobs_processed"], stats["jobs_failed"]) == (0, 2, 0)
    assert stats["peak_active_jobs"] == 2


def test_memory_info_values(two_gpus):
    info = two_gpus.get_memory_info()
    assert info["total"] == 48 * GiB and info["free"] == 48 * GiB and info["used"] == 0
    assert info["capacity"] == 2 * CAPACITY_24G and info["leased"] == 0
    # Simulated devices list processes; this process uses nothing on them.
    assert (info["allocated"], info["reserved"], info["max_allocated"]) == (0, 0, 0)
    assert info["source"] == "driver"
    with two_gpus.managed_generation("m", 4096):
        assert two_gpus.get_memory_info()["leased"] == 4 * GiB
    assert two_gpus.get_memory_info()["leased"] == 0


def test_memory_allocation_reserved_and_max_tracking_from_torch(two_gpus, fake_torch):
    with two_gpus.managed_generation("t", 2000) as lease:
        index = lease.device_index
        fake_torch.use(index, 700 * MiB)
        info = two_gpus.get_memory_info()
        assert info["source"] == "torch"
        assert info["allocated"] == 700 * MiB
        assert info["reserved"] == 702 * MiB
        fake_torch.free(index, 500 * MiB)
        info = two_gpus.get_memory_info()
        assert (info["allocated"], info["max_allocated"]) == (200 * MiB, 700 * MiB)
    # The figures also reach the core (the provider the ledger uses for its accounting).
    assert two_gpus._core.framework_memory(index) == (200 * MiB, 702 * MiB, 700 * MiB)


@pytest.mark.in_process_only("the fake NVML re-reads its scenario in this process only")
def test_memory_figures_from_the_driver(fake_nvml, mode):
    import os

    pid = os.getpid()
    scenario = fake_nvml(f"device\nname NVIDIA A10\nmemory_total_mib 24576\n"
                         f"memory_used_mib 1000\nprocess {pid} 600\nprocess 1 400\n")
    m = GPUManager(device="cuda")
    info = m.get_memory_info()
    assert info["source"] == "driver"
    assert (info["allocated"], info["max_allocated"]) == (600 * MiB, 600 * MiB)
    assert info["used"] == 1000 * MiB
    scenario.write_text(scenario.read_text().replace(f"process {pid} 600", f"process {pid} 250"))
    reload_fake_nvml()
    # The ledger re-reads the backend after its poll interval.
    wait_until(lambda: m.get_memory_info()["allocated"] == 250 * MiB,
               "the new reading of 250 MiB")
    info = m.get_memory_info()
    assert (info["allocated"], info["max_allocated"]) == (250 * MiB, 600 * MiB)


def test_memory_figures_zero_on_cpu(mode):
    info = GPUManager(device="cpu", memory_limit=1.0).get_memory_info()
    assert (info["allocated"], info["reserved"], info["max_allocated"], info["source"]) == (
        0, 0, 0, "none")
    assert info["total"] > 0 and info["capacity"] == info["total"]


def test_cache_info_inside_a_job(two_gpus, fake_torch):
    with two_gpus.managed_generation("cache", 1000) as lease:
        fake_torch.use(lease.device_index, 64 * MiB)
        info = two_gpus.get_memory_info()
        assert info["reserved"] >= info["allocated"] == 64 * MiB


def test_utilization_tracking_simulated_and_cpu(two_gpus):
    assert two_gpus.get_utilization() == 0.0
    assert GPUManager(device="cpu", memory_limit=1.0).get_utilization() is None


def test_utilization_and_multiple_devices_from_the_driver(fake_nvml, mode):
    fake_nvml("device\nname NVIDIA A100-SXM4-40GB\nmemory_total_mib 40960\nutilization 30 10\n"
              "device\nname NVIDIA A100-SXM4-40GB\nmemory_total_mib 40960\nutilization 50 20\n")
    both = GPUManager(device="cuda")
    assert both.get_utilization() == 40.0
    assert [d["utilization"] for d in both.get_gpu_stats()["devices"]] == [30, 50]
    assert GPUManager(device="cuda:1").get_utilization() == 50.0


def test_gpu_name_detection_and_device_properties(fake_nvml, mode):
    fake_nvml("device\nuuid GPU-1111\nname NVIDIA H100 80GB HBM3\nbus_id 00000000:3B:00.0\n"
              "memory_total_mib 81559\ncompute_capability 9 0\ntemperature 41\n")
    m = GPUManager()
    stats = m.get_gpu_stats()
    assert m.device == "cuda" and stats["backend"] == "nvml"
    assert stats["device_name"] == "NVIDIA H100 80GB HBM3"
    d = stats["devices"][0]
    assert (d["uuid"], d["pci_bus_id"], d["compute_capability"], d["temperature"]) == (
        "GPU-1111", "00000000:3B:00.0", (9, 0), 41)
    assert d["total_memory"] == 81559 * MiB


def test_multiple_devices_of_different_sizes(simulate):
    simulate("24GiB,80GiB")
    m = GPUManager(memory_limit=0.8)
    stats = m.get_gpu_stats()
    assert [d["total_memory"] for d in stats["devices"]] == [24 * GiB, 80 * GiB]
    assert stats["device_name"] == "Simulated GPU (24 GiB), Simulated GPU (80 GiB)"
    # 30000 MiB only fits the 80 GiB device.
    with m.managed_generation("big", 30000) as lease:
        assert lease.device == "cuda:1"


# ---- admission ----

def test_can_process_job_boundary(two_gpus):
    assert two_gpus.can_process_job(19660) is True
    assert two_gpus.can_process_job(19661) is False


def test_can_allocate_various_sizes(two_gpus):
    for size in (100, 1000, 5000, 10000):
        lease = two_gpus.allocate_job(f"size-{size}", size)
        assert lease.memory_mb == size and lease.bytes == size * MiB
        assert two_gpus.get_memory_info()["leased"] == size * MiB
        assert two_gpus.cleanup_after_job(f"size-{size}") is True
    assert two_gpus.get_gpu_stats()["jobs_processed"] == 4


def test_allocate_job_and_context_manager(two_gpus):
    lease = two_gpus.allocate_job("alloc", 19660)
    assert lease.held and lease.job_id == "alloc" and lease.device in ("cuda:0", "cuda:1")
    with pytest.raises(GPUCapacityError) as err:
        two_gpus.allocate_job("too-big", 19661)
    assert err.value.code == "never_fits"
    with two_gpus.allocate_job("ctx", 1000) as inner:
        assert inner.held
    assert not inner.held
    assert two_gpus.get_gpu_stats()["active_jobs"] == 1
    # The manager keeps allocate_job()'s lease even when the caller drops it.
    del lease
    assert two_gpus.get_gpu_stats()["active_jobs"] == 1
    assert two_gpus.cleanup_after_job("alloc") is True


def test_allocate_job_default_estimate(two_gpus):
    lease = two_gpus.allocate_job("default")
    assert lease.memory_mb == gpu_manager.DEFAULT_ESTIMATED_VRAM_MB == 6000
    lease.release()


def test_cleanup_after_job(two_gpus):
    two_gpus.allocate_job("c1", 1000)
    assert two_gpus.cleanup_after_job("c1") is True
    assert two_gpus.cleanup_after_job("c1") is False  # already released
    assert two_gpus.cleanup_after_job("never-seen") is False
    assert two_gpus.cleanup_after_job(None) is False
    assert two_gpus.cleanup_after_job() is False
    stats = two_gpus.get_gpu_stats()
    assert (stats["active_jobs"], stats["jobs_processed"]) == (0, 1)


def test_memory_cleanup_empties_torch_cache(two_gpus, fake_torch):
    lease = two_gpus.allocate_job("clean", 1000)
    index = int(lease.device.split(":")[1])
    fake_torch.calls.clear()
    assert two_gpus.cleanup_after_job("clean") is True
    assert ("empty_cache", index) in fake_torch.calls
    fake_torch.calls.clear()
    two_gpus.cleanup_after_job()  # no id: only the cleanup, on the devices it has used
    assert ("empty_cache", index) in fake_torch.calls


def test_concurrent_job_limit(two_gpus):
    leases = [two_gpus.allocate_job(f"j{i}", 1024) for i in range(3)]
    assert two_gpus.can_process_job(1024) is False
    with pytest.raises(GPUCapacityError) as err:
        two_gpus.allocate_job("j3", 1024)
    assert err.value.code == "resource_exhausted"
    assert two_gpus.get_gpu_stats()["active_jobs"] == 3
    leases[0].release()
    assert two_gpus.can_process_job(1024) is True
    two_gpus.allocate_job("j3", 1024).release()
    for lease in leases[1:]:
        lease.release()


def test_memory_limit_enforcement(simulate):
    simulate("10GiB")
    m = GPUManager(memory_limit=0.5)
    assert m.can_process_job(5120) and not m.can_process_job(5121)
    with pytest.raises(GPUCapacityError, match="never fit"):
        m.allocate_job("over", 5121)
    with m.allocate_job("first", 3000):
        assert m.can_process_job(2120) and not m.can_process_job(2121)
        with pytest.raises(GPUCapacityError) as err:
            m.allocate_job("second", 2121)
        assert err.value.code == "resource_exhausted"


# ---- managed_generation ----

def test_managed_generation_context(two_gpus):
    with two_gpus.managed_generation("gen", 4000, timeout=1, priority=2) as lease:
        assert lease.held and lease.device.startswith("cuda:") and lease.memory_mb == 4000
        assert lease.priority == 2
        assert two_gpus.get_gpu_stats()["active_jobs"] == 1
    assert not lease.held
    stats = two_gpus.get_gpu_stats()
    assert (stats["active_jobs"], stats["jobs_processed"], stats["jobs_failed"]) == (0, 1, 0)


def test_managed_generation_failure_is_recorded_and_reraised(two_gpus):
    with pytest.raises(KeyError, match="boom"):
        with two_gpus.managed_generation("fails", 1000) as lease:
            raise KeyError("boom")
    assert not lease.held and lease.outcome == "failed"
    stats = two_gpus.get_gpu_stats()
    assert (stats["jobs_failed"], stats["jobs_succeeded"], stats["active_jobs"]) == (1, 0, 0)


def test_managed_generation_waits_for_a_release(two_gpus):
    first = two_gpus.allocate_job("hog", 19000)
    second = two_gpus.allocate_job("hog2", 19000)
    released = []

    def release():
        released.append(len(two_gpus.snapshot()["queue"]))  # what waited when it was released
        first.release()

    releaser = when_queued(two_gpus, "waiter", release)
    with two_gpus.managed_generation("waiter", 19000, timeout=5) as lease:
        assert lease.device == first.device
    releaser.join(timeout=10)
    assert released == [1]  # the waiter was queued, and granted by the release
    assert two_gpus.get_gpu_stats()["jobs_timed_out"] == 0
    second.release()


def test_managed_generation_timeout_and_zero_means_no_wait(two_gpus):
    held = [two_gpus.allocate_job(f"h{i}", 19000) for i in range(2)]
    start = time.monotonic()
    with pytest.raises(QueueTimeoutError):
        with two_gpus.managed_generation("now", 19000, timeout=0):
            pass
    assert time.monotonic() - start < 0.1
    start = time.monotonic()
    with pytest.raises(QueueTimeoutError) as err:
        with two_gpus.managed_generation("later", 19000, timeout=0.3):
            pass
    assert 0.25 <= time.monotonic() - start < 3
    assert err.value.code == "timed_out" and isinstance(err.value, TimeoutError)
    assert two_gpus.get_gpu_stats()["jobs_timed_out"] == 2
    for lease in held:
        lease.release()


def test_default_timeout_applies_when_timeout_is_none(simulate):
    simulate("24GiB")
    m = GPUManager(default_timeout=0.2)
    with m.allocate_job("hog", 19000):
        start = time.monotonic()
        with pytest.raises(QueueTimeoutError):
            with m.managed_generation("w", 19000):
                pass
        assert 0.15 <= time.monotonic() - start < 3


def test_cancel_a_waiting_generation(two_gpus):
    held = [two_gpus.allocate_job(f"h{i}", 19000) for i in range(2)]
    cancelled = []
    canceller = when_queued(two_gpus, "waits", lambda: cancelled.append(two_gpus.cancel("waits")))
    # A deadline, so that a cancel that misses ends the test with its message, not a hang.
    with pytest.raises(gpu_manager.JobCancelledError):
        with two_gpus.managed_generation("waits", 1000, timeout=20):
            pass
    canceller.join(timeout=10)
    assert cancelled == [True]
    assert two_gpus.cancel("waits") is False
    for lease in held:
        lease.release()


def test_oom_inside_the_block(two_gpus, fake_torch):
    fake_torch.calls.clear()
    with pytest.raises(fake_torch.OutOfMemoryError):
        with two_gpus.managed_generation("oom", 1000) as lease:
            raise fake_torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    stats = two_gpus.get_gpu_stats()
    assert (stats["jobs_oom"], stats["jobs_failed"]) == (1, 1)
    assert ("empty_cache", lease.device_index) in fake_torch.calls
    # Other errors are failures, not out-of-memory ones.
    with pytest.raises(ValueError):
        with two_gpus.managed_generation("other", 1000):
            raise ValueError("x")
    stats = two_gpus.get_gpu_stats()
    assert (stats["jobs_oom"], stats["jobs_failed"]) == (1, 2)


def test_device_synchronization(two_gpus, fake_torch):
    two_gpus.synchronize()  # simulated: nothing runs there, nothing to wait for
    assert ("synchronize", 0) in fake_torch.calls
    GPUManager(device="cpu", memory_limit=1.0).synchronize()  # a no-op on the CPU


def test_device_synchronization_without_torch(two_gpus):
    two_gpus.synchronize(1)
    with pytest.raises(ValueError, match="device 7 does not exist"):
        two_gpus.synchronize(7)


# ---- no GPU ----

def test_error_handling_with_no_gpu(mode):
    with pytest.raises(gpu_manager.DeviceUnavailableError, match="none is usable") as err:
        GPUManager(device="cuda")
    assert err.value.code == "unavailable"
    with pytest.raises(gpu_manager.DeviceUnavailableError):
        GPUManager(device="cuda:0")


def test_fallback_to_cpu_runs_jobs(mode):
    m = GPUManager(memory_limit=1.0)
    assert m.device == "cpu" and not m.cuda_available
    with m.managed_generation("cpu-job", 64) as lease:
        assert lease.device == "cpu"
        assert m.get_gpu_stats()["active_jobs"] == 1
    assert m.get_gpu_stats()["jobs_processed"] == 1
    assert m.get_gpu_stats()["device_name"] != ""


# ---- the legacy class ----

def test_legacy_gpu_memory_manager(two_gpus):
    legacy = GPUMemoryManager(two_gpus)
    assert legacy.VRAM_TOTAL == 24576
    assert legacy.AVAILABLE_VRAM == 19660
    assert legacy.SAFETY_MARGIN == 24576 - 19660
    assert legacy.get_available_memory() == 19660
    assert legacy.can_process_job() is True and legacy.can_process_job(19661) is False
    with legacy.allocate_job("legacy") as lease:
        assert lease.memory_mb == 6000
        assert legacy.get_available_memory() == 19660  # the other device is still empty
        with legacy.allocate_job("legacy2", 19660):
            assert legacy.get_available_memory() == 19660 - 6000
    assert two_gpus.get_gpu_stats()["jobs_processed"] == 2


def test_legacy_uses_the_singleton(simulate):
    simulate("24GiB")
    assert GPUMemoryManager().manager is get_gpu_manager()


# ---- integration ----

def test_integration_batch_processor(two_gpus):
    from concurrent.futures import ThreadPoolExecutor

    results = {}

    def job(i):
        with two_gpus.managed_generation(f"batch-{i}", 2000 + 1000 * (i % 5)) as lease:
            time.sleep(0.005)
            results[i] = lease.device
        return i

    with ThreadPoolExecutor(max_workers=6) as pool:
        assert sorted(pool.map(job, range(30))) == list(range(30))
    assert set(results.values()) <= {"cuda:0", "cuda:1"}
    stats = two_gpus.get_gpu_stats()
    assert (stats["jobs_processed"], stats["active_jobs"], stats["leased_memory"]) == (30, 0, 0)
    assert stats["peak_active_jobs"] == 3


def test_integration_model_processor(two_gpus):
    class ModelProcessor:
        def __init__(self, manager):
            self.manager = manager
            self.loads = 1

        def process(self, request_id, size_mb):
            with self.manager.managed_generation(request_id, size_mb) as lease:
                return f"mesh-{request_id}@{lease.device}"

    proc = ModelProcessor(two_gpus)
    outputs = [proc.process(f"r{i}", 3000) for i in range(5)]
    assert outputs[0].startswith("mesh-r0@cuda:") and proc.loads == 1
    assert two_gpus.get_gpu_stats()["jobs_succeeded"] == 5


def test_integration_memory_tracking_during_an_operation(two_gpus):
    seen = []
    with two_gpus.managed_generation("track", 7000) as lease:
        seen.append(two_gpus.get_memory_info()["leased"])
        device = two_gpus.get_gpu_stats()["devices"][lease.device_index]
        assert device["leased_memory"] == 7000 * MiB
        assert device["admissible_memory"] == CAPACITY_24G - 7000 * MiB
    seen.append(two_gpus.get_memory_info()["leased"])
    assert seen == [7000 * MiB, 0]


def test_integration_multi_job_scenario(two_gpus):
    a = two_gpus.allocate_job("a", 12000)
    b = two_gpus.allocate_job("b", 12000)
    assert a.device_index != b.device_index  # 24000 MiB cannot share one device
    c = two_gpus.allocate_job("c", 7000)  # best fit: fits beside either
    assert two_gpus.get_gpu_stats()["leased_memory"] == 31000 * MiB
    assert not two_gpus.can_process_job(100)  # the concurrency limit
    for lease in (a, b, c):
        lease.release()
    assert two_gpus.get_gpu_stats()["jobs_processed"] == 3


def test_integration_resource_exhaustion(two_gpus):
    held = [two_gpus.allocate_job(f"fill-{i}", 19660) for i in range(2)]
    assert two_gpus.get_memory_info()["admissible"] == 2 * (CAPACITY_24G - 19660 * MiB)
    assert not two_gpus.can_process_job(1)
    with pytest.raises(GPUCapacityError):
        two_gpus.allocate_job("one-more", 1)
    with pytest.raises(QueueTimeoutError):
        with two_gpus.managed_generation("waits", 1, timeout=0.05):
            pass
    for lease in held:
        lease.release()
    assert two_gpus.can_process_job(19660)
    stats = two_gpus.get_gpu_stats()
    assert (stats["jobs_rejected"], stats["jobs_timed_out"]) == (1, 1)


# ---- documentation for IDEs and help() ----

def test_public_api_has_docstrings_and_stubs():
    from pathlib import Path

    missing = [name for name in gpu_manager.__all__
               if callable(getattr(gpu_manager, name)) and not getattr(gpu_manager, name).__doc__]
    methods = [n for n in dir(GPUManager) if not n.startswith("_")]
    missing += [f"GPUManager.{n}" for n in methods if not getattr(GPUManager, n).__doc__]
    missing += [f"Lease.{n}" for n in ("device", "device_index", "bytes", "memory_mb", "held",
                                      "release", "mark_failed")
                if not getattr(gpu_manager.Lease, n).__doc__]
    assert missing == []
    assert {"can_process_job", "allocate_job", "cleanup_after_job", "managed_generation",
            "get_gpu_stats", "get_memory_info", "get_utilization"} <= set(methods)
    package = Path(gpu_manager.__file__).parent
    assert (package / "py.typed").exists() and (package / "_core.pyi").exists()
    assert "class Lease" in (package / "_core.pyi").read_text()
