#!/usr/bin/python3
"""Replays a seeded matrix of traces with `gpumgr simulate` and compares queue policies.

For every cell (a workload mix x an offered load x a seed) it generates a trace, replays it
with fifo, greedy and the default policy (best-fit placement with the default queue), and
prints makespan / lower bound, mean, p99 and max wait for each. The last line is the summary:
in how many cells the default is within 1% of greedy or better on makespan and on mean wait,
and within 1% of FIFO or better on max wait (docs/scheduling.md says why those are the peers).

Mixes (every job size is per device; pools are given to `gpumgr simulate --devices`, memory
limit 0.8, no concurrency limit):

  serving  4x80GiB  single-GPU; VRAM lognormal, median 24 GiB, clipped to 12-61 GiB; hold
                    lognormal, median 16 s, clipped to 4-120 s; 10% at priority 1
  studio   4x40GiB  bench/traces/make_studio_trace.py's mix: image 60% (4-8 GiB, 5-30 s),
                    shape 25% (10-16 GiB, 30-90 s), texture 15% (14-22 GiB, 60-180 s);
                    10% at priority 1
  bursts   4x40GiB  the studio mix arriving in bursts: 10-40 jobs within 2 s, bursts
                    Poisson
  gangs    8x40GiB  15% gangs (10% 2-GPU, 5% 4-GPU); VRAM lognormal, median 12 GiB, 4-32
                    GiB; hold lognormal, median 60 s, 10-600 s
  mixed    24GiB,24GiB,80GiB,80GiB  60% small (4-16 GiB uniform), 40% as serving (12-61
                    GiB: those above 19.2 GiB fit only the 80 GiB cards); holds as serving
  alibaba  10x32GiB bench/traces/alibaba_openb.csv with its arrival times scaled so that the
                    offered load is the cell's (one seed: the trace is fixed)

Generated jobs name their kind (the `kind` column), from the generator's own branches:
studio and bursts image/shape/texture, serving one kind, gangs one per GPU count, mixed
small/large. The scheduler learns each kind's holds during the replay (duration backfill,
docs/scheduling.md); the Alibaba trace names none.

Offered load = sum of VRAM x GPUs x hold / (pool lease capacity x arrival span); arrivals of
the generated mixes are Poisson (or bursts) at the rate that gives the cell's load in
expectation.

Usage:
  /usr/bin/python3 bench/sched_matrix.py [--gpumgr build/src/cli/gpumgr] [--quick]
      [--jobs 600] [--seeds 1 2 3] [--loads 0.7 0.9 1.0 1.1 1.3] [--mixes serving ...]
      [--policy NAME]  (the policy compared as the default; default: best-fit)
      [--reserve-after-holds X]  (passed to gpumgr simulate)
      [--no-kinds]  (generated traces name no job kinds: no duration backfill)
      [--simulate-arg=ARG ...]  (more arguments for gpumgr simulate, e.g.
                                 --simulate-arg=--no-duration-backfill)
      [--diagnose]  (for every cell the default misses, replays it again with the aging
                     dial swept from 0 to greedy and says why it misses: see below)
--diagnose: the default's aging (`--reserve-after-holds`, docs/scheduling.md) is a dial from
"reserve at once" (0) to plain greedy (no reservation ever, the `inf` end). For each missed cell
the cell is replayed at every value of DIAL and the miss is put in one of three classes: a
value of the dial meets all three targets there (the dial's default is what misses); the mean
and max targets conflict (no value meets both: the values that give greedy's mean wait let
the longest wait exceed FIFO's, and the other way round); or mean and max are met together
only where the makespan misses. One line per missed cell, and counts per class before the
summary.

--quick: seed 1, loads 0.9 and 1.3, 200 jobs (a smoke test). Exit status 0 when every cell
meets the target, 1 when some miss, 2 on an error. Python standard library only.
"""

import argparse
import csv
import json
import math
import os
import random
import subprocess
import sys
import tempfile

GIB = 1024  # MiB
LIMIT = 0.8
HERE = os.path.dirname(os.path.abspath(__file__))


def lognormal_clipped(rng, median, sigma, lo, hi):
    return min(hi, max(lo, median * math.exp(rng.gauss(0.0, sigma))))


def serving_job(rng):
    vram = lognormal_clipped(rng, 24 * GIB, 0.35, 12 * GIB, 61 * GIB)
    hold = lognormal_clipped(rng, 16.0, 0.7, 4.0, 120.0)
    return int(vram), round(hold, 1), 1, (1 if rng.random() < 0.10 else 0), "serve"


STUDIO = [(0.60, (4 * GIB, 8 * GIB), (5.0, 30.0), "image"),
          (0.25, (10 * GIB, 16 * GIB), (30.0, 90.0), "shape"),
          (0.15, (14 * GIB, 22 * GIB), (60.0, 180.0), "texture")]


def studio_job(rng):
    u = rng.random()
    for share, (lo, hi), (dlo, dhi), kind in STUDIO:
        if u < share:
            break
        u -= share
    return (rng.randint(lo, hi), round(rng.uniform(dlo, dhi), 1), 1,
            1 if rng.random() < 0.10 else 0, kind)


def gang_job(rng):
    u = rng.random()
    gpus = 4 if u < 0.05 else (2 if u < 0.15 else 1)
    vram = lognormal_clipped(rng, 12 * GIB, 0.5, 4 * GIB, 32 * GIB)
    hold = lognormal_clipped(rng, 60.0, 0.8, 10.0, 600.0)
    return int(vram), round(hold, 1), gpus, 0, f"gang{gpus}"


def mixed_job(rng):
    if rng.random() < 0.60:
        vram, kind = rng.randint(4 * GIB, 16 * GIB), "small"
    else:
        vram, kind = int(lognormal_clipped(rng, 24 * GIB, 0.35, 12 * GIB, 61 * GIB)), "large"
    hold = lognormal_clipped(rng, 16.0, 0.7, 4.0, 120.0)
    return vram, round(hold, 1), 1, (1 if rng.random() < 0.10 else 0), kind


# name -> (job generator, pool spec, device sizes in MiB, bursty)
MIXES = {
    "serving": (serving_job, "4x80GiB", [80 * GIB] * 4, False),
    "studio": (studio_job, "4x40GiB", [40 * GIB] * 4, False),
    "bursts": (studio_job, "4x40GiB", [40 * GIB] * 4, True),
    "gangs": (gang_job, "8x40GiB", [40 * GIB] * 8, False),
    "mixed": (mixed_job, "24GiB,24GiB,80GiB,80GiB", [24 * GIB, 24 * GIB, 80 * GIB, 80 * GIB],
              False),
}
ALIBABA = ("10x32GiB", [32 * GIB] * 10)


def capacity_mib(sizes):
    # floor(limit x size) in bytes, as the library computes it; MiB here suffice for a rate.
    return sum(math.floor(LIMIT * s * 1024 * 1024) / (1024 * 1024) for s in sizes)


def generate(mix, load, seed, jobs, kinds=True):
    make, spec, sizes, bursty = MIXES[mix]
    rng = random.Random(f"{mix}/{seed}")
    shapes = [make(rng) for _ in range(jobs)]
    # Small per-device jobs on a mixed pool must fit somewhere; every generator keeps to the
    # largest capacity, so nothing is dropped.
    work = sum(v * d * g for v, d, g, _, _ in shapes)  # MiB x s
    span = work / (load * capacity_mib(sizes))  # seconds of arrivals that give the load
    rate = jobs / span
    rows = []
    t = 0.0
    i = 0
    while i < len(shapes):
        if bursty:
            size = rng.randint(10, 40)
            for _ in range(min(size, len(shapes) - i)):
                rows.append((t + rng.uniform(0, 2.0), shapes[i], i))
                i += 1
            t += rng.expovariate(rate / 25.0)  # 25 jobs a burst on average
        else:
            rows.append((t, shapes[i], i))
            i += 1
            t += rng.expovariate(rate)
    rows.sort(key=lambda r: (r[0], r[2]))
    out = [("arrival_s", "vram_mib", "duration_s", "gpus", "priority", "job_id", "kind")]
    for at, (vram, hold, gpus, prio, kind), k in rows:
        out.append((f"{at:.3f}", vram, hold, gpus, prio, f"{mix}-{k + 1}", kind if kinds else ""))
    return spec, out


def alibaba(load):
    spec, sizes = ALIBABA
    with open(os.path.join(HERE, "traces", "alibaba_openb.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    span = max(float(r["arrival_s"]) for r in rows) - min(float(r["arrival_s"]) for r in rows)
    work = sum(float(r["vram_mib"]) * float(r["duration_s"]) * int(r["gpus"]) for r in rows)
    scale = work / (load * capacity_mib(sizes)) / span
    out = [("arrival_s", "vram_mib", "duration_s", "gpus", "priority", "job_id")]
    for r in rows:
        out.append((f"{float(r['arrival_s']) * scale:.3f}", r["vram_mib"], r["duration_s"],
                    r["gpus"], r["priority"], r["job_id"]))
    return spec, out


def replay(gpumgr, spec, rows, workdir, extra, policy="all"):
    path = os.path.join(workdir, "trace.csv")
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    run = subprocess.run([gpumgr, "simulate", "--trace", path, "--devices", spec, "--policy",
                          policy, "--json"] + extra, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"gpumgr simulate failed ({run.returncode}): {run.stderr.strip()}")
    reports = json.loads(run.stdout)
    return {r["policy"]: r for r in (reports if isinstance(reports, list) else [reports])}


# The aging dial of --diagnose, in mean hold times; 1e9 never reserves (plain greedy).
DIAL = [0, 0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 32, 1e9]


def dial_name(x):
    return "inf" if x >= 1e9 else f"{x:g}"


def targets(d, f, g):
    """Whether report d meets the makespan, mean and max targets against fifo f, greedy g."""
    return (d["makespan_s"] <= 1.01 * g["makespan_s"],
            d["mean_wait_s"] <= 1.01 * g["mean_wait_s"] + 1e-9,
            d["max_wait_s"] <= 1.01 * f["max_wait_s"] + 1e-9)


def diagnose(sweep, f, g):
    """(class, text) for a missed cell from its dial sweep: [(dial, report)]."""
    ok = [(x, targets(r, f, g), r) for x, r in sweep]
    every = [dial_name(x) for x, t, _ in ok if all(t)]
    if every:
        return "dial", f"met at aging {', '.join(every)}"
    mean_ok = [(x, r) for x, t, r in ok if t[1]]
    max_ok = [(x, r) for x, t, r in ok if t[2]]
    both = [x for x, t, _ in ok if t[1] and t[2]]
    if both:
        return "makespan", ("mean and max met together only at aging "
                            f"{', '.join(dial_name(x) for x in both)}, where the makespan misses")
    parts = []
    if mean_ok:
        x, r = mean_ok[0]
        parts.append(f"mean ok at aging {dial_name(x)} at the lowest, where max wait = "
                     f"{r['max_wait_s'] / max(f['max_wait_s'], 1e-9):.2f} x fifo's")
    else:
        parts.append("no aging meets the mean target")
    if max_ok:
        x, r = max_ok[-1]
        parts.append(f"max ok at aging {dial_name(x)} at the highest, where mean wait = "
                     f"{r['mean_wait_s'] / max(g['mean_wait_s'], 1e-9):.2f} x greedy's")
    else:
        parts.append("no aging meets the max target")
    parts.append(f"greedy's own max wait = {g['max_wait_s'] / max(f['max_wait_s'], 1e-9):.2f}"
                 " x fifo's")
    return "conflict", "; ".join(parts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpumgr", default=os.path.join(HERE, "..", "build", "src", "cli",
                                                         "gpumgr"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--loads", type=float, nargs="+", default=[0.7, 0.9, 1.0, 1.1, 1.3])
    parser.add_argument("--mixes", nargs="+", default=list(MIXES) + ["alibaba"])
    parser.add_argument("--policy", default="best-fit",
                        help="the `gpumgr simulate` policy compared as the default")
    parser.add_argument("--no-kinds", action="store_true",
                        help="leave the kind column of the generated traces empty (every job "
                             "of unknown kind: no duration backfill)")
    parser.add_argument("--simulate-arg", action="append", default=[],
                        help="an extra argument for `gpumgr simulate` (repeatable), e.g. "
                             "--simulate-arg=--no-duration-backfill")
    parser.add_argument("--reserve-after-holds", type=float, default=None,
                        help="passed to `gpumgr simulate` (the backfill queue's aging; "
                             "0 is the rule before aging)")
    parser.add_argument("--diagnose", action="store_true",
                        help="for each cell the default misses, sweep the aging dial and say "
                             "why it misses")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.loads, args.jobs = [1], [0.9, 1.3], 200
    for m in args.mixes:
        if m not in MIXES and m != "alibaba":
            parser.error(f"unknown mix '{m}': use {', '.join(list(MIXES) + ['alibaba'])}")
    if not os.access(args.gpumgr, os.X_OK):
        print(f"sched_matrix: no gpumgr binary at {args.gpumgr} (build it, or pass --gpumgr)",
              file=sys.stderr)
        return 2

    cols = ["fifo", "greedy", args.policy]
    head = f"{'mix':8} {'load':>4} {'seed':>4}"
    for c in cols:
        head += f" | {c[:9]:>9}: {'ms/LB':>5} {'mean':>7} {'p99':>7} {'max':>7}"
    print(head + " | miss")
    cells = 0
    met = {"makespan": 0, "mean": 0, "max": 0, "all": 0}
    logs = {"makespan": 0.0, "mean": 0.0, "max": 0.0}  # sums of log ratios, for geomeans
    per_mix = {}  # mix -> [cells, makespan ok, mean ok, max ok, log mean ratio, log max ratio]

    def ratio(a, b):
        return (a + 1e-3) / (b + 1e-3)  # waits may be 0
    missed = []  # (mix, load, seed, spec, rows, fifo, greedy) of missed cells, for --diagnose
    extra = ([] if args.reserve_after_holds is None else
             ["--reserve-after-holds", str(args.reserve_after_holds)]) + args.simulate_arg
    with tempfile.TemporaryDirectory() as workdir:
        for mix in args.mixes:
            for load in args.loads:
                for seed in ([1] if mix == "alibaba" else args.seeds):
                    if mix == "alibaba":
                        spec, rows = alibaba(load)
                    else:
                        spec, rows = generate(mix, load, seed, args.jobs, not args.no_kinds)
                    try:
                        rep = replay(args.gpumgr, spec, rows, workdir, extra)
                    except RuntimeError as e:
                        print(f"sched_matrix: {mix} load {load} seed {seed}: {e}",
                              file=sys.stderr)
                        return 2
                    f, g, d = (rep[c] for c in cols)
                    ok_ms = d["makespan_s"] <= 1.01 * g["makespan_s"]
                    ok_mean = d["mean_wait_s"] <= 1.01 * g["mean_wait_s"] + 1e-9
                    ok_max = d["max_wait_s"] <= 1.01 * f["max_wait_s"] + 1e-9
                    cells += 1
                    logs["makespan"] += math.log(ratio(d["makespan_s"], g["makespan_s"]))
                    logs["mean"] += math.log(ratio(d["mean_wait_s"], g["mean_wait_s"]))
                    logs["max"] += math.log(ratio(d["max_wait_s"], f["max_wait_s"]))
                    met["makespan"] += ok_ms
                    met["mean"] += ok_mean
                    met["max"] += ok_max
                    met["all"] += ok_ms and ok_mean and ok_max
                    m = per_mix.setdefault(mix, [0, 0, 0, 0, 0.0, 0.0])
                    m[0] += 1
                    m[1] += ok_ms
                    m[2] += ok_mean
                    m[3] += ok_max
                    m[4] += math.log(ratio(d["mean_wait_s"], g["mean_wait_s"]))
                    m[5] += math.log(ratio(d["max_wait_s"], f["max_wait_s"]))
                    line = f"{mix:8} {load:4.1f} {seed:4d}"
                    for r in (f, g, d):
                        line += (f" | {'':9}  {r['makespan_over_lb']:5.3f} {r['mean_wait_s']:7.1f}"
                                 f" {r['p99_wait_s']:7.1f} {r['max_wait_s']:7.1f}")
                    miss = [n for n, ok in (("makespan", ok_ms), ("mean", ok_mean),
                                            ("max", ok_max)) if not ok]
                    print(line + " | " + (",".join(miss) if miss else "-"), flush=True)
                    if miss and args.diagnose:
                        missed.append((mix, load, seed, spec, rows, f, g))
        diagnoses = {"dial": 0, "conflict": 0, "makespan": 0}
        for mix, load, seed, spec, rows, f, g in missed:
            sweep = []
            for x in DIAL:
                dial_extra = [a for a in extra]
                if "--reserve-after-holds" in dial_extra:
                    k = dial_extra.index("--reserve-after-holds")
                    del dial_extra[k:k + 2]
                try:
                    rep = replay(args.gpumgr, spec, rows, workdir,
                                 dial_extra + ["--reserve-after-holds", repr(x)], args.policy)
                except RuntimeError as e:
                    print(f"sched_matrix: {mix} load {load} seed {seed}: {e}", file=sys.stderr)
                    return 2
                sweep.append((x, rep[args.policy]))
            kind, text = diagnose(sweep, f, g)
            diagnoses[kind] += 1
            print(f"why {mix:8} {load:4.1f} {seed:4d}: {kind}: {text}", flush=True)
    for mix, (n, ms, mean, mx, lmean, lmax) in per_mix.items():
        print(f"{mix:8} {n:2d} cells: makespan ok {ms:2d}, mean ok {mean:2d}, max ok {mx:2d}; "
              f"geomean mean wait / greedy's {math.exp(lmean / n):.3f}, max wait / fifo's "
              f"{math.exp(lmax / n):.3f}")
    gm = {k: math.exp(v / max(cells, 1)) for k, v in logs.items()}
    print(f"geometric means over the cells: makespan / greedy's {gm['makespan']:.3f}, mean "
          f"wait / greedy's {gm['mean']:.3f}, max wait / fifo's {gm['max']:.3f}")
    if args.diagnose:
        print(f"diagnosis of the {len(missed)} missed cells (aging swept over "
              f"{', '.join(dial_name(x) for x in DIAL)}): met at another aging "
              f"{diagnoses['dial']}; mean and max targets conflict (no aging meets both) "
              f"{diagnoses['conflict']}; mean and max met together only where the makespan "
              f"misses {diagnoses['makespan']}")
    print(f"summary: {args.policy} meets the target in {met['all']} of {cells} cells "
          f"(makespan within 1% of greedy or better: {met['makespan']}; mean wait within 1% "
          f"of greedy or better: {met['mean']}; max wait within 1% of fifo or better: "
          f"{met['max']})")
    return 0 if met["all"] == cells else 1


if __name__ == "__main__":
    sys.exit(main())
