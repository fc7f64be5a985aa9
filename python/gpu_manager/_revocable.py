"""Revocable leases in Python (docs/scheduling.md, "Revocable leases"; docs/python.md):
preemptible managed_generation() blocks and resident models.

The core calls Revocations.on_revoke on one of its threads (the GIL taken) when a revocable
lease of this process is revoked. That thread must not block nor call the ledger (with a
daemon it may be the thread that reads the daemon's replies): a block's on_preempt and a
resident's unload callback run on threads of their own, and the lease is released there when
they end. One that raises is reported (a RuntimeWarning) and the lease released all the same; one
that hangs loses the lease at the grace's end (in-process the ledger releases it; with the
daemon, the daemon kills this process, as it kills any holder that does not release).

Threads: every method may be called from any thread.
"""

from __future__ import annotations

import atexit
import threading
import warnings
import weakref
from typing import Any, Callable, Optional

from .errors import GPUManagerError, LeasePreempted

#: The longest resident name (its job id is "resident:" + name, at most 256 bytes).
MAX_RESIDENT_NAME = 240


def check_resident_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"resident name must be a str, got {name!r} ({type(name).__name__})")
    if not name:
        raise ValueError("resident name must not be empty")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ValueError(f"resident name must not contain control characters, got {name!r}")
    if len(name.encode()) > MAX_RESIDENT_NAME:
        raise ValueError(f"resident name is {len(name.encode())} bytes long; the limit is "
                         f"{MAX_RESIDENT_NAME}")
    return name


def beside_name(resident: Any) -> str:
    """The name of the resident a job runs beside (managed_generation's ``resident``): a
    ResidentModel, its name, or None (none: "")."""
    if resident is None:
        return ""
    if isinstance(resident, ResidentModel):
        return resident.name
    if not isinstance(resident, str):
        raise TypeError("resident must be a ResidentModel, a resident's name or None, got "
                        f"{resident!r} ({type(resident).__name__})")
    return check_resident_name(resident)


def check_grace(value: Any, name: str = "revoke_grace") -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, got {value!r}")
    value = float(value)
    if not 0 <= value <= 86400:  # also NaN
        raise ValueError(f"{name} must be a finite number of seconds in [0, 86400], got {value}")
    return value


# Threads that run callbacks and releases: daemon threads, so that a callback that hangs
# cannot keep the process from exiting; at exit those still running get a few seconds to end,
# so that the interpreter does not stop them inside a release.
_running: set[threading.Thread] = set()
_running_lock = threading.Lock()
_EXIT_WAIT_S = 5.0


def _wait_at_exit() -> None:
    with _running_lock:
        threads = list(_running)
    for thread in threads:
        thread.join(_EXIT_WAIT_S / max(1, len(threads)))


atexit.register(_wait_at_exit)


def _run_then(what: str, callback: Callable[..., Any], args: tuple[Any, ...],
              then: Callable[[], None]) -> None:
    """Runs callback(*args) on a thread of its own, then `then()`, whatever it did."""

    def body() -> None:
        try:
            callback(*args)
        except BaseException as exc:  # noqa: BLE001 (reported; the lease goes regardless)
            warnings.warn(f"{what} raised {exc!r}; its lease is released anyway",
                          RuntimeWarning, stacklevel=1)
        finally:
            try:
                then()
            finally:
                with _running_lock:
                    _running.discard(threading.current_thread())

    thread = threading.Thread(target=body, name=f"gpumgr-{what}", daemon=True)
    with _running_lock:
        _running.add(thread)
    thread.start()


class Revocations:
    """The revocable leases of one manager, by job id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generations: dict[str, tuple[weakref.ref[Any], Optional[Callable[..., Any]]]] = {}
        self._residents: dict[str, ResidentModel] = {}

    def add_generation(self, job_id: str, generation: Any,
                       on_preempt: Optional[Callable[..., Any]]) -> None:
        with self._lock:
            # Blocks that have ended and been dropped leave nothing behind.
            for job in [j for j, (ref, _) in self._generations.items() if ref() is None]:
                del self._generations[job]
            self._generations[job_id] = (weakref.ref(generation), on_preempt)

    def add_resident(self, resident: ResidentModel) -> None:
        with self._lock:
            self._residents[resident.job_id] = resident

    def forget_resident(self, resident: ResidentModel) -> None:
        with self._lock:
            if self._residents.get(resident.job_id) is resident:
                del self._residents[resident.job_id]

    def on_revoke(self, notice: dict[str, Any]) -> None:
        job_id = notice["job_id"]
        with self._lock:
            entry = self._generations.get(job_id)
            resident = self._residents.get(job_id)
        if resident is not None:
            resident._revoked_by(notice)
            return
        if entry is None or notice.get("ended"):
            return
        generation = entry[0]()
        if generation is None:
            return
        on_preempt = entry[1]
        if on_preempt is None:
            generation._preempt()
        else:
            _run_then(f"on_preempt of job {job_id!r}", on_preempt, (notice,),
                      generation._preempt)


class ResidentModel:
    """A resident model: an idle model kept loaded while nobody needs its memory
    (GPUManager.keep_resident). Its lease is revoked, least recently used first, when a job
    cannot fit otherwise; then ``unload`` runs (on a thread of its own) and the lease is
    released. Call ``use()`` each time the model serves, so that the most used stay.

    Attributes: ``name``, ``job_id`` (``"resident:" + name``), ``lease`` (the Lease),
    ``device`` (the torch device string), ``revoked`` (whether it was revoked).
    """

    def __init__(self, core: Any, registry: Revocations, name: str, lease: Any,
                 unload: Optional[Callable[[], Any]]) -> None:
        self.name = name
        self.job_id = lease.job_id
        self.lease = lease
        self._core = core
        self._registry = registry
        self._unload = unload
        self._lock = threading.Lock()
        self._revoked = False
        self._released = False

    @property
    def device(self) -> str:
        return str(self.lease.device)

    @property
    def revoked(self) -> bool:
        with self._lock:
            return self._revoked

    def use(self) -> None:
        """The model is being used now: it becomes the most recently used resident.

        Raises:
            LeasePreempted: it was revoked (its memory went to another job): keep it
                resident again to use it.
            GPUManagerError: it was released.
        """
        with self._lock:
            revoked, released = self._revoked, self._released
        if revoked:
            raise LeasePreempted(f"resident {self.name!r} was revoked for a job that needed its "
                                 "memory; keep_resident() it again to use it")
        if released:
            raise GPUManagerError(f"resident {self.name!r} was released")
        try:
            self._core.touch(self.job_id)
        except GPUManagerError as err:
            if err.code == "failed_precondition":  # revoked meanwhile
                raise LeasePreempted(f"resident {self.name!r} was revoked: {err}") from None
            raise

    def release(self) -> None:
        """Gives the memory back (idempotent)."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._registry.forget_resident(self)
        try:
            self.lease.release()
        except GPUManagerError:
            pass  # released at the grace's end already (the unload took too long)

    def _revoked_by(self, notice: dict[str, Any]) -> None:
        with self._lock:
            first = not self._revoked
            self._revoked = True
        if notice.get("ended") or not first:
            return
        # Never on this thread, even with nothing to unload: it may be the one that reads the
        # daemon's replies, which the release waits for.
        _run_then(f"unload of resident {self.name!r}", self._unload or (lambda: None), (),
                  self.release)

    def __enter__(self) -> ResidentModel:
        return self

    def __exit__(self, *exc: Any) -> bool:
        self.release()
        return False

    def __repr__(self) -> str:
        state = "revoked" if self.revoked else ("released" if self._released else "resident")
        return f"ResidentModel({self.name!r}, {self.lease.bytes} bytes, {state})"
