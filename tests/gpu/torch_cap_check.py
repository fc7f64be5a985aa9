#!/usr/bin/env python3
"""GPU check of the torch memory cap (needs an NVIDIA GPU, a CUDA build of torch, and the
gpu_manager module built for the same interpreter; no network).

    PYTHONPATH=BUILD/python python3 tests/gpu/torch_cap_check.py [--gpumgr BUILD/src/cli/gpumgr]
        [--device N] [--lease-mib 1024]

Two processes share GPU N, each under its own lease of LEASE MiB:

  greedy     allocates 128 MiB blocks, up to all the GPU's free memory: with the cap it must
             be refused at its lease, with torch's
             out-of-memory error inside its managed_generation block, with gpu_manager's note
             naming the lease, its size and the peak, and torch must never have reserved more
             than the lease;
  neighbour  holds 40% of its lease and, round after round, returns and retakes another 40%
             from the driver while the greedy one runs: it must finish without any error and
             with its data intact (a greedy job past its lease would leave it no memory).

Then the same greedy job with GPUMGR_ENFORCE=0 must get past its lease (the cap is what
stopped it). With --gpumgr, the greedy job also runs under `gpumgr serve` + `gpumgr run
--vram` and must be stopped by the cap that GPUMGR_LEASE_BYTES gives the child.

Prints one line per check and RESULT: PASS / FAIL / SKIP (with the reason). Exit codes: 0 pass,
1 fail, 77 skip (no CUDA torch, no GPU, no gpu_manager, too little free memory).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SKIP = 77
MiB = 1 << 20

CHILD = r'''
import json, os, sys, time
role, device, lease_mib, limit_mib, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4]), float(sys.argv[5])
import gpu_manager  # before torch's first CUDA call
import torch

MiB = 1 << 20
out = {"role": role, "oom": False, "note": None, "error": None}
blocks = []


def report():
    if torch.cuda.is_initialized():
        out["peak_reserved"] = int(torch.cuda.max_memory_reserved(device))
    out["reserved_mib_at_end"] = int(torch.cuda.memory_reserved(device)) // MiB
    print("RESULT " + json.dumps(out), flush=True)


def greedy_blocks():
    # Up to limit_mib in 128 MiB blocks; stops at the first refusal.
    while len(blocks) * 128 < limit_mib:
        blocks.append(torch.empty(128 * MiB, dtype=torch.uint8, device=f"cuda:{device}"))
    out["allocated_mib"] = len(blocks) * 128


def neighbour_work():
    # Holds 40% of its lease and, every round, gives another 40% back to the driver
    # (empty_cache) and takes it again: a greedy neighbour that took the GPU's free memory
    # would make that fail.
    n = lease_mib * 2 // 5 * MiB
    x = (torch.arange(n, device=f"cuda:{device}") % 251).to(torch.uint8)
    checksum = int(x.sum(dtype=torch.int64))
    deadline = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < deadline:
        y = torch.ones(n, dtype=torch.uint8, device=f"cuda:{device}")
        x.add_(y).sub_(y)
        del y
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        assert int(x.sum(dtype=torch.int64)) == checksum, "the neighbour's data changed"
        rounds += 1
    out["rounds"] = rounds
    out["allocated_mib"] = 2 * n // MiB


try:
    if os.environ.get("GPUMGR_LEASE_BYTES"):  # under gpumgr run: the lease is the run's
        work = greedy_blocks if role == "greedy" else neighbour_work
        try:
            work()
        except torch.cuda.OutOfMemoryError as exc:
            out["oom"] = True
            out["error"] = str(exc).splitlines()[0]
    else:
        manager = gpu_manager.GPUManager(device=f"cuda:{device}", memory_limit=1.0)
        out["enforce"] = manager.enforce
        try:
            with manager.managed_generation(f"{role}-{os.getpid()}", lease_mib, timeout=60):
                print("READY", flush=True)
                greedy_blocks() if role == "greedy" else neighbour_work()
        except torch.cuda.OutOfMemoryError as exc:
            out["oom"] = True
            out["error"] = str(exc).splitlines()[0]
            out["note"] = (getattr(exc, "__notes__", None) or [None])[0]
        out["jobs_oom"] = manager.get_gpu_stats()["jobs_oom"]
except Exception as exc:  # noqa: BLE001
    out["error"] = f"{type(exc).__name__}: {exc}"
finally:
    blocks.clear()
    report()
'''


def skip(reason: str) -> int:
    print(f"RESULT: SKIP ({reason})")
    return SKIP


def result_of(proc: subprocess.CompletedProcess[str]) -> dict:
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"error": f"no result (exit {proc.returncode}): {proc.stderr.strip()[-800:]}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=int, default=0, help="torch's cuda:N (default 0)")
    parser.add_argument("--lease-mib", type=int, default=1024, help="each job's lease")
    parser.add_argument("--gpumgr", type=Path, help="the gpumgr binary, for the `run` case")
    args = parser.parse_args()

    try:
        import torch
    except ImportError as exc:
        return skip(f"torch is not installed: {exc}")
    if not torch.version.cuda or not torch.cuda.is_available():
        return skip(f"torch {torch.__version__} has no usable CUDA (torch.version.cuda="
                    f"{torch.version.cuda!r})")
    try:
        import gpu_manager  # noqa: F401
    except ImportError as exc:
        return skip(f"gpu_manager is not importable (PYTHONPATH=BUILD/python): {exc}")
    if args.device >= torch.cuda.device_count():
        return skip(f"no cuda:{args.device}: torch sees {torch.cuda.device_count()} device(s)")
    free, total = torch.cuda.mem_get_info(args.device)
    lease = args.lease_mib
    # Two leases, the enforce=0 run's 2x lease, and CUDA contexts: want 4x lease + 2 GiB free.
    # (Case 1's greedy job may take up to all of it: that is what the cap must prevent.)
    if free < (4 * lease + 2048) * MiB:
        return skip(f"cuda:{args.device} has {free // MiB} MiB free; the check needs "
                    f"{4 * lease + 2048} MiB (try --lease-mib smaller)")
    torch.cuda.empty_cache()
    del torch  # the children use the GPU; this process keeps only its context

    with tempfile.TemporaryDirectory() as tmp:
        child = Path(tmp) / "child.py"
        child.write_text(textwrap.dedent(CHILD))
        env = {k: v for k, v in os.environ.items()
               if k not in ("GPUMGR_SOCKET", "GPUMGR_SIMULATE", "GPUMGR_NVML_LIBRARY",
                            "GPUMGR_ENFORCE", "GPUMGR_LEASE_BYTES")}
        checks: list[tuple[str, bool, str]] = []

        def run_child(role: str, limit_mib: int, seconds: float,
                      extra: dict[str, str] | None = None,
                      prefix: list[str] | None = None) -> subprocess.Popen[str]:
            # Under gpumgr run, CUDA_VISIBLE_DEVICES makes the leased GPU the child's cuda:0.
            device = 0 if prefix else args.device
            cmd = (prefix or []) + [sys.executable, str(child), role, str(device), str(lease),
                                    str(limit_mib), str(seconds)]
            return subprocess.Popen(cmd, env=dict(env, **(extra or {})), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)

        def finish(p: subprocess.Popen[str]) -> dict:
            out, err = p.communicate(timeout=300)
            return result_of(subprocess.CompletedProcess(p.args, p.returncode, out, err))

        # 1. greedy beside a neighbour, both capped at their leases.
        neighbour = run_child("neighbour", 0, 15.0)
        time.sleep(3)  # the neighbour holds its memory before the greedy one starts
        greedy = finish(run_child("greedy", free // MiB, 0))
        calm = finish(neighbour)
        peak = greedy.get("peak_reserved", 0)
        checks.append(("greedy gets torch's OOM inside its block", greedy.get("oom") is True,
                       str(greedy.get("error"))))
        checks.append(("greedy's torch never reserved more than its lease",
                       0 < peak <= lease * MiB, f"peak {peak // MiB} MiB, lease {lease} MiB"))
        note = greedy.get("note") or ""
        checks.append(("the OOM note names the lease, its size and the peak",
                       note.startswith("gpu_manager: job 'greedy-") and
                       "ran out of its lease of" in note and "reserved by torch" in note, note))
        checks.append(("jobs_oom counts it", greedy.get("jobs_oom") == 1,
                       str(greedy.get("jobs_oom"))))
        checks.append(("the neighbour ran to the end untouched",
                       calm.get("error") is None and calm.get("rounds", 0) > 0,
                       f"rounds {calm.get('rounds')}, error {calm.get('error')}"))

        # 2. the same greedy job without the cap gets past its lease.
        loose = finish(run_child("greedy", 2 * lease, 0, {"GPUMGR_ENFORCE": "0"}))
        checks.append(("GPUMGR_ENFORCE=0: greedy gets past its lease",
                       loose.get("enforce") is False and not loose.get("oom") and
                       loose.get("allocated_mib", 0) >= 2 * lease,
                       f"allocated {loose.get('allocated_mib')} MiB, error {loose.get('error')}"))

        # 3. under gpumgr run: GPUMGR_LEASE_BYTES caps the child.
        if args.gpumgr is not None:
            sock = Path(tmp) / "gpumgr.sock"
            daemon = subprocess.Popen([str(args.gpumgr), "serve", "--socket", str(sock),
                                       "--no-http", "--device", "cuda", "--quiet"], env=env)
            try:
                for _ in range(100):
                    if sock.exists():
                        break
                    time.sleep(0.1)
                run = [str(args.gpumgr), "run", "--socket", str(sock), "--vram", f"{lease}MiB",
                       "--gpus", "1", "--"]
                ran = finish(run_child("greedy", 4 * lease, 0, prefix=run))
                peak = ran.get("peak_reserved", 0)
                checks.append(("gpumgr run: the child gets OOM at its lease",
                               ran.get("oom") is True and 0 < peak <= lease * MiB,
                               f"peak {peak // MiB} MiB, error {ran.get('error')}"))
            finally:
                daemon.terminate()
                daemon.wait(timeout=10)

    failed = 0
    for name, ok, detail in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
        failed += not ok
    print("RESULT: PASS" if not failed else "RESULT: FAIL")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
