"""Threads: many managed_generation jobs at once, and waits that release the GIL."""

from __future__ import annotations

import random
import threading
import time

import pytest

from gpu_manager import GPUManager
from conftest import GiB, MiB, wait_until

CAPACITY_24G = int(0.8 * 24 * GiB)


def queued(manager: GPUManager) -> list[str]:
    """The job ids waiting in the manager's queue, in order."""
    return [w["job_id"] for w in manager.snapshot()["queue"]]


class Failure(Exception):
    pass


def test_sixteen_threads_two_hundred_jobs(two_gpus):
    rng = random.Random(1234)
    jobs = [(f"job-{i}", rng.randint(1, 16000), i % 9 == 4) for i in range(200)]
    queue = list(reversed(jobs))
    queue_lock = threading.Lock()
    probe_lock = threading.Lock()
    inside = 0
    inside_bytes = [0, 0]
    violations: list[str] = []
    outcomes = {"ok": 0, "raised": 0}
    max_inside = 0

    def probe(lease):
        """Inside a block: our own count and the core's view both respect every limit."""
        nonlocal max_inside
        snap = two_gpus.snapshot()
        if len(snap["leases"]) > 3:
            violations.append(f"{len(snap['leases'])} leases held")
        for d in snap["devices"]:
            if d["leased_bytes"] > d["capacity_bytes"]:
                violations.append(f"device {d['index']} over capacity")
        with probe_lock:
            max_inside = max(max_inside, inside)
            if inside > 3:
                violations.append(f"{inside} blocks inside at once")
            for i, b in enumerate(inside_bytes):
                if b > CAPACITY_24G:
                    violations.append(f"device {i}: {b} bytes inside blocks")

    def worker():
        nonlocal inside
        while True:
            with queue_lock:
                if not queue:
                    return
                job_id, size, fails = queue.pop()
            try:
                with two_gpus.managed_generation(job_id, size, timeout=30) as lease:
                    with probe_lock:
                        inside += 1
                        inside_bytes[lease.device_index] += lease.bytes
                    try:
                        probe(lease)
                        time.sleep(rng.random() * 0.002)
                        if fails:
                            raise Failure(job_id)
                    finally:
                        with probe_lock:
                            inside -= 1
                            inside_bytes[lease.device_index] -= lease.bytes
                with probe_lock:
                    outcomes["ok"] += 1
            except Failure:
                with probe_lock:
                    outcomes["raised"] += 1

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert violations == []
    expected_failures = sum(1 for _, _, fails in jobs if fails)
    assert outcomes == {"ok": 200 - expected_failures, "raised": expected_failures}
    assert max_inside >= 2  # the jobs really overlapped
    stats = two_gpus.get_gpu_stats()
    assert stats["jobs_failed"] == expected_failures
    assert stats["jobs_succeeded"] == 200 - expected_failures
    assert stats["jobs_processed"] == 200
    assert stats["peak_active_jobs"] <= 3
    snap = two_gpus.snapshot()
    assert snap["leases"] == [] and snap["queue"] == []
    assert [d["leased_bytes"] for d in snap["devices"]] == [0, 0]


def test_waiting_releases_the_gil(simulate):
    simulate("24GiB")
    m = GPUManager(max_concurrent_jobs=1)
    held = m.allocate_job("hog", 1000)
    started = threading.Event()
    done = []

    def waiter(i):
        started.set()
        with m.managed_generation(f"waiter-{i}", 1000, timeout=10):
            done.append(i)

    threads = [threading.Thread(target=waiter, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    assert started.wait(timeout=10)
    wait_until(lambda: len(queued(m)) == 4, "the four waiters to be queued")
    # The interpreter keeps running Python while four threads wait in C++.
    deadline = time.monotonic() + 0.3
    spins = 0
    while time.monotonic() < deadline:
        spins += 1
    assert spins > 10_000
    assert done == [] and len(m.snapshot()["queue"]) == 4
    held.release()
    for t in threads:
        t.join(timeout=10)
    assert sorted(done) == [0, 1, 2, 3]
    assert m.get_gpu_stats()["jobs_processed"] == 5


@pytest.mark.in_process_only("two in-process managers have budgets of their own; through "
                             "a daemon they share one")
def test_waiters_do_not_block_each_other(simulate):
    """A thread waiting without a deadline holds back neither a job on another manager nor
    another waiter's timeout."""
    simulate("24GiB")
    full = GPUManager(max_concurrent_jobs=1)
    other = GPUManager(max_concurrent_jobs=1)
    hog = full.allocate_job("hog", 1000)
    results = {}

    def forever():
        with full.managed_generation("forever", 1000, timeout=None):
            results["forever"] = "granted"

    def short_wait():
        t = time.monotonic()
        try:
            with full.managed_generation("short", 1000, timeout=0.2):
                pass
        except Exception as e:  # noqa: BLE001 - the type is checked below
            results["short"] = (type(e).__name__, time.monotonic() - t)

    def elsewhere():
        t = time.monotonic()
        with other.managed_generation("elsewhere", 1000, timeout=5):
            results["elsewhere"] = time.monotonic() - t

    first = threading.Thread(target=forever)
    first.start()
    try:
        wait_until(lambda: queued(full) == ["forever"], "'forever' to be queued")
        rest = [threading.Thread(target=short_wait), threading.Thread(target=elsewhere)]
        for t in rest:
            t.start()
        for t in rest:
            t.join(timeout=5)
        assert results["elsewhere"] < 0.15
        name, waited = results["short"]
        assert name == "QueueTimeoutError" and 0.15 <= waited < 1.5
        assert "forever" not in results
    finally:
        hog.release()  # on a failed assertion too: the waiter without a deadline then ends
        first.join(timeout=5)
    assert results["forever"] == "granted"


@pytest.mark.parametrize("n", [3])
def test_garbage_collected_lease_is_released(two_gpus, n):
    for i in range(n):
        two_gpus._core.try_acquire(f"dropped-{i}", 100 * MiB)  # never stored: released at once
    assert two_gpus.get_gpu_stats()["active_jobs"] == 0
    assert two_gpus.get_gpu_stats()["jobs_processed"] == n


def test_ctrl_c_interrupts_a_wait_in_the_main_thread(tmp_path, daemon_for):
    """Python delivers signals to the main thread only: a wait there still answers Ctrl-C."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import gpu_manager

    script = tmp_path / "wait.py"
    # A thread of the child says when the main thread's request is in the queue: the signal
    # is sent to a wait, never before it (no fixed sleep standing in for that).
    script.write_text(
        "import threading, time, gpu_manager\n"
        "m = gpu_manager.GPUManager(simulate='24GiB', max_concurrent_jobs=1)\n"
        "hog = m.allocate_job('hog', 1000)\n"
        "def announce():\n"
        "    deadline = time.monotonic() + 10\n"
        "    while 'main' not in [w['job_id'] for w in m.snapshot()['queue']]:\n"
        "        if time.monotonic() > deadline:\n"
        "            print('never queued', flush=True)\n"
        "            return\n"
        "        time.sleep(0.005)\n"
        "    print('queued', flush=True)\n"
        "threading.Thread(target=announce, daemon=True).start()\n"
        "try:\n"
        "    with m.managed_generation('main', 1000, timeout=None):\n"
        "        print('granted?!')\n"
        "except KeyboardInterrupt:\n"
        "    s = m.get_gpu_stats()\n"
        "    print('interrupted', len(m.snapshot()['queue']), s['jobs_cancelled'],\n"
        "          s['active_jobs'], s['source'].split()[0], flush=True)\n")
    env = dict(os.environ, PYTHONPATH=str(Path(gpu_manager.__file__).resolve().parents[1]))
    env.pop("GPUMGR_SOCKET", None)
    socket = daemon_for("24GiB", max_concurrent_jobs=1)
    if socket is not None:
        env["GPUMGR_SOCKET"] = socket
    child = subprocess.Popen([sys.executable, "-W", "ignore::RuntimeWarning", str(script)],
                             env=env, stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(20, child.kill)  # a child that never answers ends the reads
    watchdog.start()
    try:
        line = child.stdout.readline().strip()
        assert line == "queued", f"the child said {line!r} before its wait was queued"
        sent = time.monotonic()
        child.send_signal(signal.SIGINT)
        line = child.stdout.readline()
        answered = time.monotonic() - sent
        out, _ = child.communicate(timeout=10)
    finally:
        watchdog.cancel()
        if child.poll() is None:  # a failed assertion above: the child still waits
            child.kill()
            child.wait()
    words = line.split()
    assert words and words[0] == "interrupted", line + out
    assert answered < 1.5
    # No longer queued, counted as cancelled, hog still held; in the mode asked for.
    assert words[1:] == ["0", "1", "1", "in-process" if socket is None else "daemon"]
