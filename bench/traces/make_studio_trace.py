#!/usr/bin/python3
"""Generates a seeded "studio" trace for `gpumgr simulate` (format: docs/simulate.md).

The workload is that of a 2D-to-3D generation studio sharing a few GPUs:

  kind     share  VRAM (uniform)   hold time (uniform)
  image     60%   4-8 GiB          5-30 s      text/image-to-image generation
  shape     25%   10-16 GiB        30-90 s     image-to-3D shape reconstruction
  texture   15%   14-22 GiB        60-180 s    texture synthesis / baking

Every job takes one GPU. A --priority-share fraction of jobs (default 10%), drawn
independently of the kind, has priority 1 (interactive previews), the rest priority 0.

Arrivals are a Poisson process whose rate is chosen so that the offered load
    (expected VRAM x hold time per job) x rate / (devices x capacity)
equals --load, where capacity = floor(memory-limit x device memory), the bytes leases may hold
on one device. The default load of 0.95 keeps the GPUs busy and makes jobs queue in bursts:
the trace then measures how well a policy packs, not how idle the pool is. Above about 0.9
the load exceeds what any online packing of these sizes sustains (bench/RESULTS.md), and the
backlog, not the policy, sets the makespan.

The default pool is 4 devices of 40 GiB (--devices 4x40GiB), whose capacity under the default
memory limit 0.8 is 32 GiB: every job fits (the largest is 22 GiB), and a texture job (over 16
GiB, half a device) cannot share a device with another one. On 24 GiB cards (19.2 GiB of
capacity) the texture jobs above 19.2 GiB would never fit; the script refuses such a pool.

The shipped trace was made with the defaults:
    /usr/bin/python3 bench/traces/make_studio_trace.py --out bench/traces/studio.csv
and is replayed with
    gpumgr simulate --trace bench/traces/studio.csv --devices 4x40GiB
Python standard library only; the same seed gives the same file.
"""

import argparse
import csv
import math
import random
import sys

# (kind, share, vram range in MiB, hold time range in s)
MIX = [
    ("image", 0.60, (4 * 1024, 8 * 1024), (5.0, 30.0)),
    ("shape", 0.25, (10 * 1024, 16 * 1024), (30.0, 90.0)),
    ("texture", 0.15, (14 * 1024, 22 * 1024), (60.0, 180.0)),
]


def expected_mib_seconds():
    """E[vram x hold] per job, in MiB x s: the two are drawn independently, so E[v]E[d]."""
    return sum(share * (lo + hi) / 2 * (dlo + dhi) / 2
               for _, share, (lo, hi), (dlo, dhi) in MIX)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--devices", type=int, default=4, help="devices in the pool")
    parser.add_argument("--device-mib", type=int, default=40 * 1024,
                        help="memory of one device in MiB (default 40960, i.e. 40 GiB)")
    parser.add_argument("--memory-limit", type=float, default=0.8,
                        help="the fraction of a device leases may hold (gpumgr's default 0.8)")
    parser.add_argument("--load", type=float, default=0.95,
                        help="offered load as a fraction of the pool's capacity")
    parser.add_argument("--priority-share", type=float, default=0.10,
                        help="fraction of jobs with priority 1")
    parser.add_argument("--out", default="-", help="output CSV (default stdout)")
    args = parser.parse_args()

    if args.jobs < 1 or args.devices < 1 or args.load <= 0:
        parser.error("--jobs and --devices must be >= 1 and --load > 0")
    if not 0 < args.memory_limit <= 1:
        parser.error("--memory-limit must be in (0, 1]")
    # The same rounding as the library: capacity = floor(limit x total bytes).
    capacity_mib = math.floor(args.memory_limit * args.device_mib * 2**20) / 2**20
    largest = max(hi for _, _, (_, hi), _ in MIX)
    if largest > capacity_mib:
        parser.error(f"the largest job ({largest} MiB) would never fit a device whose capacity "
                     f"is {capacity_mib:.1f} MiB; use larger devices")

    rng = random.Random(args.seed)
    rate = args.load * args.devices * capacity_mib / expected_mib_seconds()  # jobs per second

    kinds = [k for k, _, _, _ in MIX]
    weights = [w for _, w, _, _ in MIX]
    ranges = {k: (v, d) for k, _, v, d in MIX}
    rows = []
    t = 0.0
    offered = 0.0
    for i in range(1, args.jobs + 1):
        if i > 1:
            t += rng.expovariate(rate)  # the first job arrives at 0: traces start at 0
        kind = rng.choices(kinds, weights)[0]
        (vlo, vhi), (dlo, dhi) = ranges[kind]
        vram = rng.randint(vlo, vhi)  # whole MiB
        duration = round(rng.uniform(dlo, dhi), 1)
        priority = 1 if rng.random() < args.priority_share else 0
        offered += vram * duration
        rows.append((f"{t:.3f}", vram, f"{duration:.1f}", 1, priority, f"{kind}-{i:04d}"))

    out = sys.stdout if args.out == "-" else open(args.out, "w", newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["arrival_s", "vram_mib", "duration_s", "gpus", "priority", "job_id"])
    writer.writerows(rows)
    if out is not sys.stdout:
        out.close()
    span = float(rows[-1][0]) or 1.0
    print(f"{args.jobs} jobs over {span:.0f} s at {rate:.4f} jobs/s; realised offered load "
          f"{offered / span / (args.devices * capacity_mib):.3f} of {args.devices} x "
          f"{capacity_mib:.0f} MiB", file=sys.stderr)


if __name__ == "__main__":
    main()
