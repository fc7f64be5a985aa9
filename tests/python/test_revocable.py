"""Revocable leases from Python (docs/python.md, "Revocable leases"): a preemptible
managed_generation block gets LeasePreempted in its own thread when a job of higher priority
needs its memory, and that job starts once the block ends; a resident model's unload callback
runs when a job needs its memory, least recently used first; a callback that raises or hangs
does not keep the memory. Each test runs in-process and through a daemon (conftest.py) unless
it says why not."""

from __future__ import annotations

import threading
import time
import warnings

import pytest

from gpu_manager import GPUManager, LeasePreempted
from conftest import wait_until


@pytest.fixture
def one_gpu(simulate):
    """One simulated 10 GiB device, all of it leasable."""
    simulate("1x10GiB")
    return GPUManager(max_concurrent_jobs=4, memory_limit=1.0)


def run_preemptible(mgr, job_id, mib, outcome, **kw):
    """A block that loops until it is preempted (or 30 s pass); `outcome` gets what ended it."""
    started = threading.Event()

    def body():
        try:
            with mgr.managed_generation(job_id, mib, preemptible=True, **kw):
                started.set()
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    time.sleep(0.005)
            outcome.append("finished")
        except LeasePreempted as exc:
            outcome.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    assert started.wait(30), "the preemptible block never started"
    return thread


def test_a_preemptible_block_is_preempted_and_the_urgent_job_starts(one_gpu):
    outcome = []
    thread = run_preemptible(one_gpu, "batch", 8000, outcome)
    lease = next(l for l in one_gpu.snapshot()["leases"] if l["job_id"] == "batch")
    assert lease["revocable"] == "preemptible"
    with one_gpu.managed_generation("urgent", 6000, timeout=30, priority=5) as urgent:
        assert urgent.job_id == "urgent"
        thread.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], LeasePreempted)
        assert outcome[0].code == "preempted"
        leases = [l["job_id"] for l in one_gpu.snapshot()["leases"]]
        assert leases == ["urgent"]
    stats = one_gpu.snapshot()["stats"]
    assert stats["revocations_preempted"] == 1
    assert stats["revocation_kills"] == 0


def test_on_preempt_runs_first_with_the_notice(one_gpu):
    outcome, notices = [], []
    thread = run_preemptible(one_gpu, "batch", 8000, outcome,
                             on_preempt=lambda notice: notices.append(notice))
    with one_gpu.managed_generation("urgent", 6000, timeout=30, priority=5):
        thread.join(30)
    assert isinstance(outcome[0], LeasePreempted)
    assert len(notices) == 1
    assert notices[0]["job_id"] == "batch"
    assert notices[0]["cause"] == "preempted"
    assert notices[0]["for_job"] == "urgent"
    assert notices[0]["grace_s"] > 0


def test_an_equal_priority_job_does_not_preempt(one_gpu):
    outcome = []
    thread = run_preemptible(one_gpu, "batch", 8000, outcome)
    try:
        with pytest.raises(Exception, match="timed out"):
            with one_gpu.managed_generation("same", 6000, timeout=0.5, priority=0):
                pass
        assert outcome == []
        assert one_gpu.snapshot()["stats"]["revocations_preempted"] == 0
    finally:
        one_gpu.revoke("batch")  # ends the block: the test's own way out
        thread.join(30)
    assert isinstance(outcome[0], LeasePreempted)


def test_a_resident_is_unloaded_for_a_job_that_needs_its_memory(one_gpu):
    unloaded = threading.Event()
    model = one_gpu.keep_resident("llama", 8000, unload=unloaded.set)
    assert model.job_id == "resident:llama"
    model.use()
    lease = next(l for l in one_gpu.snapshot()["leases"] if l["job_id"] == "resident:llama")
    assert lease["revocable"] == "resident" and lease["resident"] == "llama"
    with one_gpu.managed_generation("job", 6000, timeout=30):
        assert unloaded.is_set()
        assert model.revoked
        with pytest.raises(LeasePreempted, match="revoked"):
            model.use()
    assert one_gpu.snapshot()["stats"]["revocations_resident"] == 1


def test_the_least_recently_used_resident_goes(one_gpu):
    gone = []
    a = one_gpu.keep_resident("a", 4000, unload=lambda: gone.append("a"))
    b = one_gpu.keep_resident("b", 4000, unload=lambda: gone.append("b"))
    a.use()  # "b" is now the least recently used
    with one_gpu.managed_generation("job", 4000, timeout=30):
        assert gone == ["b"]
        assert not a.revoked and b.revoked
        a.use()
    a.release()


def test_an_unload_that_raises_still_gives_the_memory_back(one_gpu):
    def broken():
        raise RuntimeError("cannot unload")

    one_gpu.keep_resident("broken", 8000, unload=broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with one_gpu.managed_generation("job", 6000, timeout=30):
            pass
    assert any("cannot unload" in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert one_gpu.snapshot()["leases"] == []


@pytest.mark.in_process_only("with the daemon a hanging unload gets this process killed")
def test_an_unload_that_hangs_loses_the_lease_at_the_grace(one_gpu):
    release = threading.Event()
    model = one_gpu.keep_resident("stuck", 8000, unload=lambda: release.wait(60),
                                  revoke_grace=0.3)
    started = time.monotonic()
    try:
        with one_gpu.managed_generation("job", 6000, timeout=30):
            assert time.monotonic() - started >= 0.3
            assert [l["job_id"] for l in one_gpu.snapshot()["leases"]] == ["job"]
        assert one_gpu.snapshot()["stats"]["revocation_kills"] == 1
    finally:
        release.set()
    wait_until(lambda: model.revoked, "the resident to be marked revoked")
    assert one_gpu.snapshot()["leases"] == []


@pytest.fixture
def two_small_gpus(simulate):
    """Two simulated 10 GiB devices, all of each leasable."""
    simulate("2x10GiB")
    return GPUManager(max_concurrent_jobs=4, memory_limit=1.0)


def test_a_job_beside_its_model_waits_for_room_and_never_unloads_it(two_small_gpus):
    # A serving worker keeps "llama" on device 0; another job holds the rest of device 0. The
    # worker's request beside the model waits there (device 1, empty, is not where the model
    # is), and the model it is about to run on is never revoked for it.
    mgr = two_small_gpus
    unloaded = threading.Event()
    model = mgr.keep_resident("llama", 4000, unload=unloaded.set)
    snap = mgr.snapshot()
    assert next(l for l in snap["leases"] if l["job_id"] == model.job_id)["devices"] == [0]
    assert mgr.allocate_job("other", 6000)  # best fit: the rest of device 0
    assert next(l for l in mgr.snapshot()["leases"] if l["job_id"] == "other")["devices"] == [0]
    granted = []

    in_use = []

    def serve():
        with mgr.managed_generation("request-1", 2000, timeout=30, resident=model):
            leases = {l["job_id"]: l for l in mgr.snapshot()["leases"]}
            granted.append(leases["request-1"]["devices"])
            in_use.append((leases[model.job_id]["in_use_by"],
                           leases["request-1"]["beside_resident"]))

    worker = threading.Thread(target=serve)
    worker.start()
    wait_until(lambda: [w for w in mgr.snapshot()["queue"] if w["job_id"] == "request-1"],
               "the request beside the model to wait")
    waiter = next(w for w in mgr.snapshot()["queue"] if w["job_id"] == "request-1")
    assert waiter["beside_resident"] == "llama"
    assert waiter["allowed_devices"] == [0]
    # A revocation is decided in the pass that queued the request: the snapshot shows it.
    snap = mgr.snapshot()
    assert not next(l for l in snap["leases"] if l["job_id"] == model.job_id)["revoking"]
    assert snap["stats"]["revocations_resident"] == 0
    assert not unloaded.is_set() and not model.revoked
    assert granted == []
    assert mgr.cleanup_after_job("other")
    worker.join(30)
    assert granted == [[0]]
    # While the job ran, the model was in use by it, and the job named the model.
    assert in_use == [(1, "llama")]
    assert next(l for l in mgr.snapshot()["leases"] if l["job_id"] == model.job_id)[
        "in_use_by"] == 0
    assert not unloaded.is_set() and not model.revoked
    assert mgr.snapshot()["stats"]["revocations_resident"] == 0
    model.use()  # still resident
    model.release()


def test_a_job_beside_its_model_has_another_resident_unloaded_instead(one_gpu):
    # Least recently used first would pick "llama" (the older); the job runs beside it, so
    # "other" goes.
    gone = []
    llama = one_gpu.keep_resident("llama", 4000, unload=lambda: gone.append("llama"))
    other = one_gpu.keep_resident("other", 4000, unload=lambda: gone.append("other"))
    other.use()
    with one_gpu.managed_generation("request-1", 4000, timeout=30, resident="llama"):
        assert gone == ["other"]
        assert not llama.revoked and other.revoked
    # Its grant was a use of "llama": the next job that needs room takes another resident
    # first, were there one; with none, "llama" goes for a job not beside it.
    with one_gpu.managed_generation("request-2", 8000, timeout=30):
        assert gone == ["other", "llama"]
