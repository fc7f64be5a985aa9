"""Helpers shared by the daemon's pytest files: waiting on a condition with a deadline, and
whether a Unix socket accepts connections."""
import socket
import time


def eventually(cond, timeout=10.0):
    """Polls cond() until it holds or `timeout` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def answers(path):
    """Whether something accepts connections on the Unix socket at `path`."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()
