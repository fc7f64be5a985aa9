"""Helpers shared by the daemon's pytest files: waiting on a condition with a deadline,
whether a Unix socket accepts connections, and a raw protocol connection."""
import json
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


class Session:
    """One raw protocol connection (docs/protocol.md), for what the CLI does not show."""

    def __init__(self, sock):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(20)
        self.s.connect(sock)
        # One file to read and one to write: a text file opened "rw" drops the lines it has
        # read ahead whenever it is written to.
        self.r = self.s.makefile("r")
        self.w = self.s.makefile("w")
        self.next_id = 1
        self.replies = {}
        assert self.call(op="hello", version=1)["ok"]

    def send(self, **req):
        rid = self.next_id
        self.next_id += 1
        self.w.write(json.dumps({"id": rid, **req}) + "\n")
        self.w.flush()
        return rid

    def reply(self, rid):
        while rid not in self.replies:
            line = self.r.readline()
            assert line, "the daemon closed the connection"
            r = json.loads(line)
            self.replies[r["id"]] = r
        return self.replies.pop(rid)

    def call(self, **req):
        return self.reply(self.send(**req))

    def next_reply(self):
        """The next reply to arrive, whichever request it answers."""
        if self.replies:
            rid = next(iter(self.replies))
            return self.replies.pop(rid)
        line = self.r.readline()
        assert line, "the daemon closed the connection"
        return json.loads(line)

    def close(self):
        self.r.close()  # the socket's descriptor stays open while its file objects do
        self.w.close()
        self.s.close()
