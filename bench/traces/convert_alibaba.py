#!/usr/bin/python3
"""Converts the Alibaba GPU cluster trace v2023 (openb) into a `gpumgr simulate` trace.

Source: alibaba/clusterdata, cluster-trace-gpu-v2023, openb_pod_list_default.csv, from Weng et
al., "Beware of Fragmentation: Scheduling GPU-Sharing Workloads with Fragmentation Gradient
Descent", USENIX ATC 2023. Cite that paper with any figure computed on this trace.

Every choice below is an assumption of ours, not a fact of the trace (bench/traces/README.md
repeats them next to the shipped file, which cannot hold comments):

- GPU tasks only: rows with num_gpu == 0 are dropped.
- A window of the trace: tasks created in [--start-day, --start-day + --days) days after the
  trace's time 0. The trace spans 149 days, but almost all tasks were created in its last 35
  (about 200 a day); a week keeps a replay to a fraction of a second of CPU. Tasks created
  before the window are not replayed: the pool starts empty.
- VRAM is an ESTIMATE: the trace has no GPU memory figure, only a share of a GPU. A task with
  num_gpu == 1 and gpu_milli < 1000 gets gpu_milli / 1000 of a device's lease capacity
  (capacity = floor(--memory-limit x --device-mib), whole MiB): with the defaults, 32 GiB
  devices and gpumgr's default limit 0.8, a share of 1000 is 26214 MiB. The capacity rather
  than the device's whole memory is the basis so that every task fits the device it was
  sized for, as it did in the cluster.
- Whole-GPU tasks (gpu_milli == 1000, or num_gpu > 1, whose gpu_milli is always 1000) get
  gpus = num_gpu and the full capacity on each of their devices: they share a GPU with
  nothing, as in the cluster.
- Hold time: deletion_time - scheduled_time. Tasks never scheduled (empty scheduled_time,
  pod_phase Pending) are replayed with deletion_time - creation_time, i.e. as if they had
  run for the whole time they existed. Hold times are capped at --max-hold-hours (default 24):
  some tasks run for months, and one of them would alone set a week's makespan, measuring
  nothing about scheduling. With the defaults 12 of the window's 1335 tasks are capped.
- Arrival: creation_time minus the window's first creation_time, so that the trace starts
  at 0. The cluster's own queueing (scheduled_time - creation_time) is not replayed: the
  replay queues the task itself.
- Priority: 0 for every task. The trace's qos (LS, BE, Burstable, Guaranteed) governs
  Kubernetes overcommit and eviction, not queue order; mapping it to priority would let half
  the tasks jump the queue and confound the policy comparison.
- job_id: the pod name (openb-pod-NNNN).

The shipped file was made with the defaults:
    /usr/bin/python3 bench/traces/convert_alibaba.py --out bench/traces/alibaba_openb.csv
and is meant for the pool --devices 10x32GiB, on which its offered load is 0.84: the GPUs
stay busy and tasks queue for hours, mostly behind the window's ten 4- and 8-GPU tasks, which
need most of the pool at once. On 8x32GiB (load 1.05, the fewest devices an 8-GPU task fits)
the backlog grows all week; on 12x32GiB queueing is brief.
Python standard library only.
"""

import argparse
import csv
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_INPUT = os.path.join(HERE, "..", "..", "..", "shared", "traces", "alibaba-gpu-v2023",
                             "openb_pod_list_default.csv")
DAY = 86400


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default=DEFAULT_INPUT, help="openb_pod_list_*.csv")
    parser.add_argument("--out", default="-", help="output CSV (default stdout)")
    parser.add_argument("--start-day", type=float, default=130.0,
                        help="window start, days after the trace's time 0 (default 130)")
    parser.add_argument("--days", type=float, default=7.0, help="window length in days")
    parser.add_argument("--max-hold-hours", type=float, default=24.0,
                        help="cap on a task's hold time (0: no cap)")
    parser.add_argument("--device-mib", type=int, default=32 * 1024,
                        help="memory of the devices the trace is sized for, MiB")
    parser.add_argument("--memory-limit", type=float, default=0.8,
                        help="gpumgr's memory limit on those devices (default 0.8)")
    parser.add_argument("--devices", type=int, default=10,
                        help="pool size, only for the offered-load figure printed at the end")
    args = parser.parse_args()

    capacity_mib = math.floor(args.memory_limit * args.device_mib * 2**20) // 2**20
    lo, hi = args.start_day * DAY, (args.start_day + args.days) * DAY
    cap = args.max_hold_hours * 3600 if args.max_hold_hours > 0 else math.inf

    tasks = []
    dropped_cpu = capped = unscheduled = 0
    with open(args.input, newline="") as f:
        for row in csv.DictReader(f):
            num_gpu = int(row["num_gpu"])
            if num_gpu == 0:
                dropped_cpu += 1
                continue
            created = int(row["creation_time"])
            if not lo <= created < hi:
                continue
            milli = int(row["gpu_milli"])
            if num_gpu == 1 and milli < 1000:
                vram = max(1, milli * capacity_mib // 1000)
            else:
                vram = capacity_mib
            if row["scheduled_time"]:
                hold = int(row["deletion_time"]) - int(row["scheduled_time"])
            else:
                hold = int(row["deletion_time"]) - created
                unscheduled += 1
            if hold < 0:
                sys.exit(f"{row['name']}: deletion before scheduling; not an openb pod list?")
            if hold > cap:
                hold = cap
                capped += 1
            tasks.append((created, row["name"], vram, hold, num_gpu))

    if not tasks:
        sys.exit("no GPU task in the window")
    tasks.sort()  # by creation time, then pod name
    t0 = tasks[0][0]
    out = sys.stdout if args.out == "-" else open(args.out, "w", newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["arrival_s", "vram_mib", "duration_s", "gpus", "priority", "job_id"])
    for created, name, vram, hold, gpus in tasks:
        writer.writerow([created - t0, vram, f"{hold:g}", gpus, 0, name])
    if out is not sys.stdout:
        out.close()

    span = tasks[-1][0] - t0 or 1
    load = sum(v * h * g for _, _, v, h, g in tasks) / span / (args.devices * capacity_mib)
    print(f"{len(tasks)} GPU tasks in days [{args.start_day:g}, {args.start_day + args.days:g}) "
          f"({dropped_cpu} CPU-only rows dropped in the whole file); {unscheduled} never "
          f"scheduled, replayed with deletion - creation; {capped} hold times capped at "
          f"{args.max_hold_hours:g} h; offered load {load:.2f} of {args.devices} x "
          f"{capacity_mib} MiB", file=sys.stderr)


if __name__ == "__main__":
    main()
