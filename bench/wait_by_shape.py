#!/usr/bin/python3
"""Breaks a replay's waits down by job shape: which jobs each policy makes wait.

Runs `gpumgr simulate --policy all --timeline` on a trace and prints, for every group of jobs
(by default their GPU count and per-device VRAM rounded to the GiB; `--by kind` or `--by user`
group by the trace's columns), how many there are, their mean hold, and their mean wait under
each policy. The last column is what the group adds to the mean wait over all jobs when the
chosen policy replaces FIFO: (sum of its waits under the policy - under FIFO) / all jobs, so
the column sums to the difference of the two policies' mean waits.

Usage:
  /usr/bin/python3 bench/wait_by_shape.py --trace bench/traces/alibaba_openb.csv \\
      --devices 10x32GiB [--by shape|kind|user] [--policy best-fit] [--gpumgr PATH]
      [--simulate-arg=ARG ...]
Python standard library only. Exit status 0, or 2 on an error.
"""

import argparse
import collections
import csv
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def group_key(row, by):
    if by == "kind":
        return (row["kind"] or "-",)
    if by == "user":
        return (row["user"] or "-",)
    return (int(row["gpus"]), round(float(row["vram_mib"]) / 1024))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", required=True)
    parser.add_argument("--devices", required=True)
    parser.add_argument("--by", choices=["shape", "kind", "user"], default="shape")
    parser.add_argument("--policy", default="best-fit",
                        help="the policy compared with FIFO in the last column")
    parser.add_argument("--gpumgr", default=os.path.join(HERE, "..", "build", "src", "cli",
                                                         "gpumgr"))
    parser.add_argument("--simulate-arg", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "timeline.csv")
        run = subprocess.run([args.gpumgr, "simulate", "--trace", args.trace, "--devices",
                              args.devices, "--policy", "all", "--timeline", path]
                             + args.simulate_arg, capture_output=True, text=True)
        if run.returncode != 0:
            print(f"wait_by_shape: gpumgr simulate failed ({run.returncode}): "
                  f"{run.stderr.strip()}", file=sys.stderr)
            return 2
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    policies = list(dict.fromkeys(r["policy"] + ("/" + r["residency"] if r["residency"] else "")
                                  for r in rows))
    if "fifo" not in policies or args.policy not in policies:
        print(f"wait_by_shape: no '{args.policy}' or 'fifo' rows (have {', '.join(policies)})",
              file=sys.stderr)
        return 2
    groups = collections.OrderedDict()
    jobs = 0
    for r in rows:
        policy = r["policy"] + ("/" + r["residency"] if r["residency"] else "")
        g = groups.setdefault(group_key(r, args.by), {"n": 0, "hold": 0.0, "wait": {}})
        if policy == "fifo":
            g["n"] += 1
            g["hold"] += float(r["end_s"]) - float(r["start_s"])
            jobs += 1
        g["wait"][policy] = g["wait"].get(policy, 0.0) + float(r["wait_s"])
    label = "gpus GiB" if args.by == "shape" else args.by
    head = f"{label:>10} {'jobs':>6} {'mean hold':>10}"
    for p in policies:
        head += f" {p[:12]:>12}"
    print(head + f" {'+' + args.policy[:10] + ' vs fifo':>20}")
    for key in sorted(groups):
        g = groups[key]
        name = f"{key[0]:>4} {key[1]:>5}" if args.by == "shape" else str(key[0])[:10]
        line = f"{name:>10} {g['n']:6d} {g['hold'] / g['n']:9.0f}s"
        for p in policies:
            line += f" {g['wait'].get(p, 0.0) / g['n']:11.0f}s"
        delta = (g["wait"][args.policy] - g["wait"]["fifo"]) / jobs
        print(line + f" {delta:19.1f}s")
    means = {p: sum(g["wait"].get(p, 0.0) for g in groups.values()) / jobs for p in policies}
    line = f"{'all':>10} {jobs:6d} {'':>10}"
    for p in policies:
        line += f" {means[p]:11.0f}s"
    print(line + f" {means[args.policy] - means['fifo']:19.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
