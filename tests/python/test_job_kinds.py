"""Job kinds from Python: job_kind=, None sizes (the kind's learned estimate), the estimate
note, get_estimates / forget_estimates, the in-process history (state_path), and the measured
use of each lease in get_gpu_stats()['leases'].

Measured use comes from GPUMGR_SIMULATE_PROCESSES (per-process use on simulated devices,
re-read at every poll of the ledger, every 0.25 s while a lease is held).
"""

from __future__ import annotations

import math
import os
import time

import pytest

from gpu_manager import GPUManager, GPUManagerError
from conftest import GiB, MiB, state, wait_until


@pytest.fixture
def processes(tmp_path, monkeypatch):
    """processes({device: bytes}) says this process uses that much on simulated devices."""
    path = tmp_path / "processes"
    path.write_text("")
    monkeypatch.setenv("GPUMGR_SIMULATE_PROCESSES", str(path))

    def set_use(use: dict[int, int]) -> None:
        path.write_text("".join(f"{d} {os.getpid()} {b}B\n" for d, b in use.items()))

    return set_use


# ---- validation (no core support needed) ----

BAD_KINDS = [
    ("", ValueError, r"job_kind must not be empty \(None: no kind\)"),
    ("sdxl\n1024", ValueError, "job_kind must not contain control characters"),
    ("sdxl\x7f", ValueError, "job_kind must not contain control characters"),
    ("\t", ValueError, "job_kind must not contain control characters"),
    (42, TypeError, r"job_kind must be a str or None, got 42 \(int\)"),
    (b"sdxl", TypeError, r"job_kind must be a str or None, got b'sdxl' \(bytes\)"),
]


@pytest.mark.parametrize("kind,error,message", BAD_KINDS)
def test_bad_job_kinds(two_gpus, kind, error, message):
    two_gpus.allocate_job("keeps", 1000)
    before = state(two_gpus)
    with pytest.raises(error, match=message):
        two_gpus.allocate_job("bad", 1000, job_kind=kind)
    with pytest.raises(error, match=message):
        two_gpus.allocate_job("bad", None, job_kind=kind)
    with pytest.raises(error, match=message):
        two_gpus.managed_generation("bad", 1000, job_kind=kind)
    with pytest.raises(error, match=message):
        two_gpus.managed_generation("bad", None, job_kind=kind, default_memory_mb=1000)
    with pytest.raises(error, match=message):
        two_gpus.forget_estimates(kind)
    assert state(two_gpus) == before


def test_none_size_without_a_kind_names_both(two_gpus):
    before = state(two_gpus)
    with pytest.raises(TypeError, match=r"required_memory_mb must be an int number of MiB, "
                                        r"got None: .*needs job_kind=\.\.\."):
        two_gpus.managed_generation("j", None)
    with pytest.raises(TypeError, match=r"estimated_vram .*got None: .*job_kind"):
        two_gpus.allocate_job("j", None)
    # A default alone is no kind.
    with pytest.raises(TypeError, match="job_kind"):
        two_gpus.managed_generation("j", None, default_memory_mb=1000)
    assert state(two_gpus) == before


@pytest.mark.parametrize("value,error,message", [
    (0, ValueError, "default_memory_mb must be a positive number of MiB, got 0"),
    (-1, ValueError, "default_memory_mb must be a positive"),
    (1.5, TypeError, r"default_memory_mb must be an int number of MiB, got 1\.5"),
    ("6000", TypeError, "default_memory_mb must be an int"),
    (True, TypeError, "default_memory_mb must be an int"),
])
def test_bad_default_memory(two_gpus, value, error, message):
    before = state(two_gpus)
    with pytest.raises(error, match=message):
        two_gpus.managed_generation("d", None, job_kind="k", default_memory_mb=value)
    with pytest.raises(error, match=message):
        two_gpus.allocate_job("d", None, job_kind="k", default_memory_mb=value)
    assert state(two_gpus) == before


def test_new_parameters_are_keyword_only(two_gpus):
    with pytest.raises(TypeError):
        two_gpus.managed_generation("p", 100, None, 0, "kind")  # type: ignore[misc]
    with pytest.raises(TypeError):
        two_gpus.allocate_job("p", 100, 1)  # type: ignore[misc]


@pytest.mark.parametrize("path,error,message", [
    (42, TypeError, "expected str, bytes or os.PathLike"),
    (b"/tmp/h.db", TypeError, "state_path must be a str or os.PathLike"),
    ("", ValueError, "state_path must not be empty"),
])
def test_bad_state_paths(two_gpus, path, error, message):
    with pytest.raises(error, match=message):
        GPUManager(state_path=path)


def test_an_explicit_size_with_a_kind(two_gpus):
    lease = two_gpus.allocate_job("k1", 2000, job_kind="sdxl-1024")
    assert (lease.kind, lease.estimate, lease.memory_mb) == ("sdxl-1024", "", 2000)
    with two_gpus.managed_generation("k2", 3000, job_kind="sdxl-1024",
                                     default_memory_mb=9000) as other:
        # The default applies only to a None size.
        assert (other.kind, other.memory_mb) == ("sdxl-1024", 3000)
        kinds = {l["job_id"]: l["kind"] for l in two_gpus.snapshot()["leases"]}
        assert kinds == {"k1": "sdxl-1024", "k2": "sdxl-1024"}
    plain = two_gpus.allocate_job("plain", 100)
    assert plain.kind is None and plain.estimate == ""


def test_no_history_without_a_state_path(two_gpus):
    assert two_gpus.get_estimates() == []
    assert two_gpus.forget_estimates("sdxl") is False


# ---- get_gpu_stats()['leases'] ----

ORIGINAL_STATS_KEYS = {
    "device", "device_name", "backend", "source", "cuda_available", "total_memory",
    "used_memory", "free_memory", "leased_memory", "capacity", "utilization", "active_jobs",
    "peak_active_jobs", "queued_jobs", "max_concurrent_jobs", "memory_limit", "jobs_processed",
    "jobs_succeeded", "jobs_failed", "jobs_rejected", "jobs_timed_out", "jobs_cancelled",
    "jobs_oom", "devices"}


def test_stats_list_each_lease(two_gpus):
    stats = two_gpus.get_gpu_stats()
    assert ORIGINAL_STATS_KEYS <= set(stats) and stats["leases"] == []
    a = two_gpus.allocate_job("a", 18000, job_kind="big")
    b = two_gpus.allocate_job("b", 1000, gpus=2)
    leases = {l["job_id"]: l for l in two_gpus.get_gpu_stats()["leases"]}
    assert set(leases) == {"a", "b"}
    assert (leases["a"]["kind"], leases["a"]["leased_memory"], leases["a"]["memory_mb"],
            leases["a"]["devices"], leases["a"]["device"]) == (
        "big", 18000 * MiB, 18000, [a.device_index], a.device)
    assert leases["b"]["kind"] is None and sorted(leases["b"]["devices"]) == [0, 1]
    assert [u["index"] for u in leases["b"]["usage"]] == leases["b"]["devices"]
    assert leases["a"]["overused"] is False and leases["a"]["estimate"] == ""
    b.release()
    assert [l["job_id"] for l in two_gpus.get_gpu_stats()["leases"]] == ["a"]


def test_pinned_manager_lists_its_device_only(simulate):
    simulate("2x24GiB")
    m0 = GPUManager(device="cuda:0")
    m1 = GPUManager(device="cuda:1")
    m0.allocate_job("on0", 100)
    m1.allocate_job("on1", 100)
    assert [l["job_id"] for l in m0.get_gpu_stats()["leases"]] == ["on0"]
    assert [l["job_id"] for l in m1.get_gpu_stats()["leases"]] == ["on1"]


# ---- these need the core's measured use and learned estimates ----

def test_measured_use_and_overuse_per_lease(simulate, processes):
    simulate("2x24GiB")
    processes({0: 3 * GiB})
    m = GPUManager(device="cuda:0")
    with m.managed_generation("hungry", 2048, job_kind="k") as lease:
        wait_until(lambda: lease.usage[0]["used_bytes"], "a reading of the holder's use")
        assert lease.usage == [{"device": 0, "used_bytes": 3 * GiB, "peak_used_bytes": 3 * GiB}]
        assert lease.overused is True
        stats = m.get_gpu_stats()
        (entry,) = stats["leases"]
        assert entry["usage"] == [{"index": 0, "device": "cuda:0", "used_memory": 3 * GiB,
                                   "peak_used_memory": 3 * GiB}]
        assert entry["overused"] is True and entry["leased_memory"] == 2 * GiB
        assert stats["devices"][0]["overuse_memory"] == 1 * GiB
        processes({0: 1 * GiB})
        wait_until(lambda: lease.usage[0]["used_bytes"] == 1 * GiB, "the new reading of 1 GiB")
        (entry,) = m.get_gpu_stats()["leases"]
        # Use now, and the peak of this lease.
        assert entry["usage"][0]["used_memory"] == 1 * GiB
        assert entry["usage"][0]["peak_used_memory"] == 3 * GiB
        assert entry["overused"] is False


def test_unknown_use_is_none_never_zero(mode):
    m = GPUManager(device="cpu", memory_limit=1.0)  # the CPU device lists no processes
    with m.managed_generation("cpu", 100) as lease:
        # Held past a poll of the devices (every 0.25 s), so that a reading had its chance.
        wait_until(lambda: m.get_gpu_stats()["leases"][0]["held_s"] >= 0.3,
                   "the lease to be held for 0.3 s")
        (entry,) = m.get_gpu_stats()["leases"]
        assert entry["usage"] == [{"index": 0, "device": "cpu", "used_memory": None,
                                   "peak_used_memory": None}]
        assert lease.usage == [{"device": 0, "used_bytes": None, "peak_used_bytes": None}]


@pytest.mark.filterwarnings("ignore:state_path=.* is not used")
def test_default_memory_while_the_kind_has_no_estimate(simulate, tmp_path):
    simulate("2x24GiB")
    m = GPUManager(state_path=tmp_path / "history.db")
    with m.managed_generation("first", None, job_kind="sdxl", default_memory_mb=4000) as lease:
        assert lease.memory_mb == 4000 and lease.kind == "sdxl"
        assert lease.estimate.startswith("default")
        assert "sdxl" in lease.estimate
    lease = m.allocate_job("second", None, job_kind="sdxl", default_memory_mb=3000)
    assert lease.memory_mb == 3000 and lease.estimate.startswith("default")


@pytest.mark.filterwarnings("ignore:state_path=.* is not used")
def test_no_estimate_and_no_default_fails_naming_the_kind(simulate, processes, tmp_path):
    simulate("2x24GiB")
    m = GPUManager(state_path=tmp_path / "history.db")
    before = state(m)
    with pytest.raises(GPUManagerError, match=r"'sdxl' has no recorded runs"):
        with m.managed_generation("nothing", None, job_kind="sdxl"):
            pass
    with pytest.raises(GPUManagerError, match=r"'sdxl' has no recorded runs"):
        m.allocate_job("nothing", None, job_kind="sdxl")
    after = state(m)
    for s in (before, after):
        s["stats"].pop("jobs_rejected")
    assert after == before
    # One measured run of an explicit size later, the error counts it.
    processes({0: 500 * MiB, 1: 500 * MiB})
    with m.managed_generation("sized", 1000, job_kind="sdxl") as lease:
        wait_until(lambda: lease.usage[0]["peak_used_bytes"] == 500 * MiB, "a peak of 500 MiB")
    with pytest.raises(GPUManagerError, match=r"'sdxl' has 1 measured run; 5"):
        m.allocate_job("nothing", None, job_kind="sdxl")


@pytest.mark.filterwarnings("ignore:state_path=.* is not used")
def test_learned_estimate_from_measured_runs(simulate, processes, tmp_path):
    simulate("2x24GiB")
    history = tmp_path / "history.db"
    m = GPUManager(device="cuda:0", state_path=str(history))
    peaks = [600, 700, 800, 900, 1000]  # MiB: p50 800 (nearest rank), p95 1000
    for i, peak in enumerate(peaks):
        processes({0: peak * MiB})
        with m.managed_generation(f"run-{i}", 2000, job_kind="sdxl") as lease:
            wait_until(lambda: lease.usage[0]["peak_used_bytes"] == peak * MiB,
                       f"a peak of {peak} MiB")
        processes({})
    (estimate,) = m.get_estimates()
    assert {k: estimate[k] for k in ("kind", "runs", "measured_runs", "peak_p50_bytes",
                                     "peak_p95_bytes", "peak_max_bytes", "overused_runs")} == {
        "kind": "sdxl", "runs": 5, "measured_runs": 5, "peak_p50_bytes": 800 * MiB,
        "peak_p95_bytes": 1000 * MiB, "peak_max_bytes": 1000 * MiB, "overused_runs": 0}
    assert estimate["hold_p50_s"] > 0 and estimate["hold_p95_s"] >= estimate["hold_p50_s"]
    assert abs(estimate["last_seen"] - time.time()) < 60
    # p95 + 10%, rounded up to a MiB.
    expected = math.ceil(1000 * 1.10) * MiB
    assert estimate["estimate_bytes"] == expected
    assert estimate["estimate_note"].startswith("learned from 5 runs")
    with m.managed_generation("learned", None, job_kind="sdxl", default_memory_mb=9000) as lease:
        assert lease.bytes == expected  # the estimate, not the default
        assert lease.estimate == estimate["estimate_note"]
        (entry,) = m.get_gpu_stats()["leases"]
        assert entry["estimate"] == lease.estimate and entry["leased_memory"] == expected
    # The history is the file's: a new manager reads it; forgetting empties it.
    again = GPUManager(device="cuda:0", state_path=history)
    assert [e["kind"] for e in again.get_estimates()] == ["sdxl"]
    assert again.get_estimates()[0]["runs"] == 6
    assert again.forget_estimates("sdxl") is True
    assert again.get_estimates() == [] and m.get_estimates() == []
    assert again.forget_estimates("sdxl") is False
    with pytest.raises(GPUManagerError, match="'sdxl'"):
        again.allocate_job("forgotten", None, job_kind="sdxl")
