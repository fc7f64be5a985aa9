#!/usr/bin/env python3
"""Holds GiB of device memory through the CUDA driver (ctypes, no toolkit), for GPU checks.

Usage: hold_vram.py GIB [--seconds S] [--device N]
Prints "ready <pid>" once the memory is allocated, then sleeps S seconds (default: until
killed) and exits 0.
"""
import argparse
import ctypes
import os
import sys
import time


def check(result, what):
    if result != 0:
        sys.exit(f"hold_vram: {what} failed with CUDA error {result}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("gib", type=float)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--device", type=int, default=0)
    args = parser.parse_args()
    cuda = ctypes.CDLL("libcuda.so.1")
    check(cuda.cuInit(0), "cuInit")
    device = ctypes.c_int()
    check(cuda.cuDeviceGet(ctypes.byref(device), args.device), "cuDeviceGet")
    context = ctypes.c_void_p()
    check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "cuDevicePrimaryCtxRetain")
    check(cuda.cuCtxSetCurrent(context), "cuCtxSetCurrent")
    pointer = ctypes.c_uint64()
    size = int(args.gib * (1 << 30))
    check(cuda.cuMemAlloc_v2(ctypes.byref(pointer), ctypes.c_size_t(size)), "cuMemAlloc_v2")
    print(f"ready {os.getpid()}", flush=True)
    if args.seconds is None:
        while True:
            time.sleep(3600)
    time.sleep(args.seconds)


if __name__ == "__main__":
    main()
