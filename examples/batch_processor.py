#!/usr/bin/env python3
"""A batch processor: a queue of generation jobs run by a thread pool under gpu_manager.

Run it as it is, with simulated GPUs:

    GPUMGR_SIMULATE=2x24GiB PYTHONPATH=build/python /usr/bin/python3 examples/batch_processor.py

Each job asks for the VRAM it needs with managed_generation(); the manager admits at most
max_concurrent_jobs at once and never more memory than memory_limit x each device; the rest
wait in its queue (without holding the GIL) while the pool's other threads carry on. A job
that fails is counted as failed and its lease is released all the same.
"""

from __future__ import annotations

import argparse
import random
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from gpu_manager import GPUCapacityError, QueueTimeoutError, get_gpu_manager


@dataclass
class Job:
    job_id: str
    vram_mb: int      # what the job needs, in MiB
    seconds: float    # how long the fake generation takes
    fails: bool = False


def run_job(job: Job) -> str:
    manager = get_gpu_manager()  # the process-wide manager: the same object in every thread
    with manager.managed_generation(job.job_id, job.vram_mb, timeout=30) as lease:
        time.sleep(job.seconds)  # a model would run on lease.device here
        if job.fails:
            raise RuntimeError(f"{job.job_id}: the model produced NaNs")
        return f"{job.job_id}: {job.vram_mb} MiB on {lease.device} (waited {lease.waited_s:.2f} s)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    manager = get_gpu_manager(max_concurrent_jobs=3, memory_limit=0.8)
    print(f"devices: {manager.get_gpu_stats()['device_name']} ({manager.device}), "
          f"max_concurrent_jobs={manager.max_concurrent_jobs}, memory_limit={manager.memory_limit}")

    rng = random.Random(args.seed)
    jobs = [Job(f"batch-{i:03d}", rng.choice([2000, 4000, 6000, 12000]), rng.uniform(0.02, 0.1),
                fails=(i % 10 == 9)) for i in range(args.jobs)]
    start = time.monotonic()
    ok = failed = 0
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        futures = {pool.submit(run_job, job): job for job in jobs}
        for future in as_completed(futures):
            try:
                print("done  ", future.result())
                ok += 1
            except (GPUCapacityError, QueueTimeoutError) as e:
                print("refused", futures[future].job_id, e)
                failed += 1
            except RuntimeError as e:
                print("failed", e)
                failed += 1
    stats = manager.get_gpu_stats()
    print(f"finished {ok + failed} jobs in {time.monotonic() - start:.2f} s: {ok} succeeded, "
          f"{failed} failed")
    print(f"stats: jobs_processed={stats['jobs_processed']} jobs_failed={stats['jobs_failed']} "
          f"peak_active_jobs={stats['peak_active_jobs']} active_jobs={stats['active_jobs']} "
          f"leased_memory={stats['leased_memory']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
