#!/usr/bin/python3
"""Generates a seeded "studio with models" trace for `gpumgr simulate` (docs/simulate.md).

A generation studio serves many short jobs on a few models, each of which takes seconds to
tens of seconds to load onto a GPU. Every job names its model (`model`), the model's
weights (`model_vram_mib`) and load time (`load_s`); its `vram_mib` is its working memory
beside the weights. The replay then compares unloading the model after every job with
keeping models resident between jobs (`gpumgr simulate --residency both`, the default for
such a trace).

  model    share  weights   load   working memory (uniform)   hold time (uniform)
  sdxl      70%   7 GiB     12 s   2-5 GiB                    4-20 s    image generation
  shape     20%   10 GiB    25 s   4-8 GiB                    20-60 s   image-to-3D shape
  texture   10%   12 GiB    40 s   4-10 GiB                   40-120 s  texture synthesis

Every job takes one GPU at priority 0, with its model as its kind. Arrivals are a Poisson
process (the first at 0) whose rate makes the expected offered load of unloading after every
job,
    E[(weights + working memory) x (load + hold time)] x rate / (devices x capacity),
equal --load (default 0.6), where capacity = floor(memory-limit x device memory). Loads are
about 40% of that busy time; the jobs' working memory alone offers a fifth of it.

The default pool is 4 devices of 40 GiB (--devices 4x40GiB): 32 GiB of capacity each under
the default memory limit 0.8, room for the three models together (29 GiB) with 3 GiB to
spare, so that resident models compete for memory with the jobs and with each other.

The shipped trace was made with the defaults:
    /usr/bin/python3 bench/traces/make_studio_models_trace.py --out bench/traces/studio_models.csv
and is replayed with
    gpumgr simulate --trace bench/traces/studio_models.csv --devices 4x40GiB
Python standard library only; the same seed gives the same file.
"""

import argparse
import csv
import math
import random
import sys

# (model, share, weights MiB, load s, working memory range MiB, hold time range s)
MODELS = [
    ("sdxl", 0.70, 7 * 1024, 12.0, (2 * 1024, 5 * 1024), (4.0, 20.0)),
    ("shape", 0.20, 10 * 1024, 25.0, (4 * 1024, 8 * 1024), (20.0, 60.0)),
    ("texture", 0.10, 12 * 1024, 40.0, (4 * 1024, 10 * 1024), (40.0, 120.0)),
]


def expected_unload_mib_seconds():
    """E[(weights + working) x (load + hold)] per job, in MiB x s (working and hold drawn
    independently)."""
    return sum(share * (weights + (lo + hi) / 2) * (load + (dlo + dhi) / 2)
               for _, share, weights, load, (lo, hi), (dlo, dhi) in MODELS)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--jobs", type=int, default=1500)
    parser.add_argument("--devices", type=int, default=4, help="devices in the pool")
    parser.add_argument("--device-mib", type=int, default=40 * 1024,
                        help="memory of one device in MiB (default 40960, i.e. 40 GiB)")
    parser.add_argument("--memory-limit", type=float, default=0.8,
                        help="the fraction of a device leases may hold (gpumgr's default 0.8)")
    parser.add_argument("--load", type=float, default=0.6,
                        help="offered load of unloading after every job, a fraction of the "
                             "pool's capacity")
    parser.add_argument("--out", default="-", help="output CSV (default stdout)")
    args = parser.parse_args()

    if args.jobs < 1 or args.devices < 1 or args.load <= 0:
        parser.error("--jobs and --devices must be >= 1 and --load > 0")
    if not 0 < args.memory_limit <= 1:
        parser.error("--memory-limit must be in (0, 1]")
    capacity_mib = math.floor(args.memory_limit * args.device_mib * 2**20) / 2**20
    largest = max(weights + hi for _, _, weights, _, (_, hi), _ in MODELS)
    if largest > capacity_mib:
        parser.error(f"the largest job with its model ({largest} MiB) would never fit a device "
                     f"whose capacity is {capacity_mib:.1f} MiB; use larger devices")

    rng = random.Random(args.seed)
    rate = args.load * args.devices * capacity_mib / expected_unload_mib_seconds()

    names = [m for m, *_ in MODELS]
    weights_of = [share for _, share, *_ in MODELS]
    spec = {m: rest for m, _, *rest in MODELS}
    rows = []
    t = 0.0
    for i in range(1, args.jobs + 1):
        if i > 1:
            t += rng.expovariate(rate)  # the first job arrives at 0: traces start at 0
        model = rng.choices(names, weights_of)[0]
        weights, load, (vlo, vhi), (dlo, dhi) = spec[model]
        vram = rng.randint(vlo, vhi)  # whole MiB
        duration = round(rng.uniform(dlo, dhi), 1)
        rows.append((f"{t:.3f}", vram, f"{duration:.1f}", f"{model}-{i:04d}", model, model,
                     weights, f"{load:.1f}"))

    out = sys.stdout if args.out == "-" else open(args.out, "w", newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["arrival_s", "vram_mib", "duration_s", "job_id", "kind", "model",
                     "model_vram_mib", "load_s"])
    writer.writerows(rows)
    if out is not sys.stdout:
        out.close()
    span = float(rows[-1][0]) or 1.0
    print(f"{args.jobs} jobs over {span:.0f} s at {rate:.4f} jobs/s", file=sys.stderr)


if __name__ == "__main__":
    main()
