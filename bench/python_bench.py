#!/usr/bin/env python3
"""Benchmarks of the gpu_manager Python module, beside a pure-Python baseline.

    PYTHONPATH=build/python /usr/bin/python3 bench/python_bench.py [--json]

Measures, on simulated devices (GPUMGR_SIMULATE=2x24GiB unless set) and in-process (the
daemon's GPUMGR_SOCKET is ignored), the cost of one operation when the lease is free:

  - `with mgr.managed_generation(...)`: enter (acquire) and exit (release), the target being
    under 5 microseconds;
  - `with threading.Lock()`: the pure-Python floor, measured in the same run;
  - allocate_job + cleanup_after_job, can_process_job, get_gpu_stats, get_memory_info.

Each figure is the best of --repeat runs of --number operations (the least disturbed run, as
timeit recommends), with the median beside it; bench/RESULTS.md records them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
import timeit


def measure(fn, number: int, repeat: int) -> dict[str, float]:
    fn()  # warm up
    runs = timeit.repeat(fn, number=number, repeat=repeat)
    per_op = sorted(r / number * 1e6 for r in runs)
    return {"best_us": per_op[0], "median_us": statistics.median(per_op)}


def main() -> int:
    parser = argparse.ArgumentParser(description="gpu_manager Python benchmarks")
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    os.environ.setdefault("GPUMGR_SIMULATE", "2x24GiB")
    os.environ.pop("GPUMGR_SOCKET", None)
    import gpu_manager

    mgr = gpu_manager.GPUManager(max_concurrent_jobs=3, memory_limit=0.8)
    lock = threading.Lock()

    def with_lock() -> None:
        with lock:
            pass

    def managed_generation() -> None:
        with mgr.managed_generation("bench", 1000):
            pass

    def allocate_and_cleanup() -> None:
        mgr.allocate_job("bench", 1000)
        mgr.cleanup_after_job("bench")

    def can_process() -> None:
        mgr.can_process_job(1000)

    few = max(1, args.number // 20)
    results = {
        "with threading.Lock()": measure(with_lock, args.number, args.repeat),
        "with mgr.managed_generation(...)": measure(managed_generation, args.number, args.repeat),
        "allocate_job + cleanup_after_job": measure(allocate_and_cleanup, args.number,
                                                    args.repeat),
        "can_process_job": measure(can_process, args.number, args.repeat),
        "get_gpu_stats": measure(mgr.get_gpu_stats, few, args.repeat),
        "get_memory_info": measure(mgr.get_memory_info, few, args.repeat),
    }
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_average": os.getloadavg(),
        "devices": os.environ["GPUMGR_SIMULATE"],
        "number": args.number,
        "repeat": args.repeat,
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=2))
        return 0
    print(f"# {meta['date']}, Python {meta['python']}, {meta['machine']}, load average "
          f"{', '.join(f'{x:.2f}' for x in meta['load_average'])}, devices {meta['devices']}")
    print(f"| operation | best (us) | median (us) |")
    print(f"|---|---:|---:|")
    for name, r in results.items():
        print(f"| `{name}` | {r['best_us']:.2f} | {r['median_us']:.2f} |")
    target = results["with mgr.managed_generation(...)"]["best_us"]
    print(f"\nmanaged_generation enter+exit: {target:.2f} us "
          f"({'under' if target < 5 else 'OVER'} the 5 us target)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
