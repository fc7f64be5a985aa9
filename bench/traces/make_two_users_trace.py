#!/usr/bin/python3
"""Generates a seeded two-user trace for `gpumgr simulate` (format: docs/simulate.md), the
case fair share is for: one user floods the queue, another submits now and then.

  user    jobs  arrivals                                   VRAM (uniform)  hold (uniform)
  heavy   300   Poisson, all within about the first 10 min  8-16 GiB        60-240 s
  light    30   one every 100 s from t = 30 s (+-20 s)      8-16 GiB        60-240 s

Every job takes one GPU at priority 0. On the default pool of 4 devices of 40 GiB (32 GiB of
capacity each under the default memory limit 0.8) the heavy user's flood is about 70 minutes
of work at perfect packing, so in arrival order each light job waits behind whatever of the
flood arrived before it; with fair share (the default) it goes first, being the user with the
least recent use. The flood drains in less than 4 half-lives of the default 1 h, so no heavy
waiter ages into arrival order.

The shipped trace was made with the defaults:
    /usr/bin/python3 bench/traces/make_two_users_trace.py --out bench/traces/two_users.csv
and is compared with
    gpumgr simulate --trace bench/traces/two_users.csv --devices 4x40GiB
    gpumgr simulate --trace bench/traces/two_users.csv --devices 4x40GiB --no-fair-share
"""
import argparse
import random


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--heavy-jobs", type=int, default=300)
    p.add_argument("--flood-s", type=float, default=600, help="mean span of the heavy arrivals")
    p.add_argument("--light-jobs", type=int, default=30)
    p.add_argument("--light-every-s", type=float, default=100)
    args = p.parse_args()
    rng = random.Random(args.seed)

    def job(user, arrival):
        return (round(arrival, 3), rng.randint(8 * 1024, 16 * 1024), round(rng.uniform(60, 240), 1),
                user)

    jobs = []
    t = 0.0
    for _ in range(args.heavy_jobs):
        jobs.append(job("heavy", t))
        t += rng.expovariate(args.heavy_jobs / args.flood_s)
    for k in range(args.light_jobs):
        jobs.append(job("light", max(0.0, 30 + k * args.light_every_s + rng.uniform(-20, 20))))
    jobs.sort(key=lambda j: j[0])  # stable: equal arrivals keep the order they were drawn in
    with open(args.out, "w") as f:
        f.write("arrival_s,vram_mib,duration_s,gpus,priority,job_id,user\n")
        for i, (arrival, mib, duration, user) in enumerate(jobs, 1):
            f.write(f"{arrival:.3f},{mib},{duration},1,0,{user}-{i:04d},{user}\n")


if __name__ == "__main__":
    main()
