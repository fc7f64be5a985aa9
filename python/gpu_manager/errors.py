"""The exceptions gpu_manager raises.

Every error names the problem in its message ("request of 30 GiB can never fit: ..."). Errors
that come from the C++ core also carry ``code``, the core's stable error name
("resource_exhausted", "never_fits", "timed_out", "cancelled", "already_exists",
"unavailable", ...). Bad arguments raise the built-in :class:`ValueError` (or
:class:`TypeError` for a value of the wrong type, such as a float where MiB are an int).
"""

from __future__ import annotations

__all__ = [
    "GPUManagerError",
    "GPUCapacityError",
    "QueueTimeoutError",
    "JobCancelledError",
    "DuplicateJobError",
    "DeviceUnavailableError",
    "LeaseLostError",
    "LeasePreempted",
]


class GPUManagerError(Exception):
    """Base class of every gpu_manager error."""

    #: The core's error name ("never_fits", ...), or None for errors raised in Python.
    code: str | None = None


class GPUCapacityError(GPUManagerError):
    """The job does not fit: not now (``code == "resource_exhausted"``: memory or the
    concurrency limit), or never (``code == "never_fits"``: larger than every device's
    capacity, memory_limit x total)."""


class QueueTimeoutError(GPUManagerError, TimeoutError):
    """A waiting request's timeout passed before the lease was granted
    (``code == "timed_out"``). Also a built-in :class:`TimeoutError`."""


class JobCancelledError(GPUManagerError):
    """A waiting request was cancelled (``GPUManager.cancel(job_id)`` or a CancelToken)."""


class DuplicateJobError(GPUManagerError, ValueError):
    """The job id is already held or waiting (``code == "already_exists"``). Also a
    :class:`ValueError`, since a duplicate id is a bad argument."""


class DeviceUnavailableError(GPUManagerError):
    """The devices asked for cannot be reached: ``device='cuda'`` without a usable NVIDIA
    driver, or no daemon at GPUMGR_SOCKET (``code == "unavailable"``)."""


class LeaseLostError(GPUManagerError):
    """A lease ended without its holder releasing it (``code == "lease_lost"``): root or
    another process released it, or the daemon restarted and did not give it back (none came
    back within GPUMGR_REATTACH_TIMEOUT, or it had no record of the lease). Raised when the
    block that held it ends (or at its release): the work in it ran part of its time without
    the lease's protection."""


class LeasePreempted(GPUManagerError):
    """A revocable lease was revoked for a job that needs its memory (docs/scheduling.md,
    "Revocable leases"): raised in a ``managed_generation(..., preemptible=True)`` block's
    thread at its next check (the interpreter's, between bytecodes: a thread blocked in C
    code sees it when it returns), and by ``use()`` on a resident that was revoked. The
    block's lease is released as it ends; the job may be run again later."""

    code = "preempted"

    def __init__(self, message: str = "the lease was revoked for a job that needs its memory "
                 "(preempted)") -> None:
        super().__init__(message)
