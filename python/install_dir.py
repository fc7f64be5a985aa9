"""Prints where `cmake --install` should put the gpu_manager package for a given prefix.

Usage: python3 install_dir.py PREFIX

The interpreter's default platlib when it lies under PREFIX (Debian's /usr/bin/python3 with
PREFIX=/usr/local gives /usr/local/lib/python3.X/dist-packages, which it searches); for
PREFIX=/usr on Debian, /usr/lib/python3/dist-packages; else PREFIX/lib/python3.X/site-packages
(the posix_prefix scheme), which then has to be put on PYTHONPATH.
"""
import os
import sys
import sysconfig


def main() -> None:
    prefix = os.path.normpath(sys.argv[1])
    debian = os.path.join(prefix, "lib", "python3", "dist-packages")
    if prefix == "/usr" and debian in sys.path:
        print(debian)
        return
    default = sysconfig.get_path("platlib")
    if os.path.commonpath([prefix, default]) == prefix:
        print(default)
        return
    print(sysconfig.get_path("platlib", "posix_prefix", vars={"base": prefix, "platbase": prefix}))


if __name__ == "__main__":
    main()
