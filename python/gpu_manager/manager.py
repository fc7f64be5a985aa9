"""GPUManager: the original gpu_manager API, on the C++ core (libgpumgr).

Units: every "MB" of the original API is a MiB (1024 * 1024 bytes) here; memory figures in the
dicts that get_gpu_stats() and get_memory_info() return are bytes.

Threads: every method may be called from any thread. Waiting for a lease releases the GIL.
"""

from __future__ import annotations

import gc
import math
import operator
import os
import threading
import warnings
import weakref
from typing import Any, Callable, ContextManager, Optional

from . import _core, _revocable, _torch
from ._revocable import ResidentModel

__all__ = ["GPUManager", "Lease", "ResidentModel", "get_gpu_manager", "DEFAULT_ESTIMATED_VRAM_MB"]

Lease = _core.Lease
MiB = 1024 * 1024
#: allocate_job()'s default estimate, in MiB (the original API's 6000 "MB").
DEFAULT_ESTIMATED_VRAM_MB = 6000
_MAX_MIB = (2**64 - 1) // MiB


def _check_mib(value: Any, name: str) -> int:
    """A positive int number of MiB, or TypeError / ValueError naming the problem."""
    if type(value) is int and 0 < value <= _MAX_MIB:  # the common case, first
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if isinstance(value, bool):
                raise TypeError
            value = operator.index(value)  # numpy integers are fine
        except TypeError:
            raise TypeError(
                f"{name} must be an int number of MiB, got {value!r} ({type(value).__name__})"
            ) from None
    if value <= 0:
        raise ValueError(f"{name} must be a positive number of MiB, got {value}")
    if value > _MAX_MIB:
        raise ValueError(f"{name} of {value} MiB is beyond any device")
    return value


def _check_job_id(job_id: Any) -> str:
    if type(job_id) is str and job_id:
        return job_id
    if not isinstance(job_id, str):
        raise TypeError(f"job_id must be a str, got {job_id!r} ({type(job_id).__name__})")
    if not job_id:
        raise ValueError("job_id must not be empty")
    return job_id


def _check_job_kind(job_kind: Any) -> str:
    """A job kind (validated like a job id) -> the core's kind; None -> '' (no kind)."""
    if job_kind is None:
        return ""
    if not isinstance(job_kind, str):
        raise TypeError(f"job_kind must be a str or None, got {job_kind!r} "
                        f"({type(job_kind).__name__})")
    if not job_kind:
        raise ValueError("job_kind must not be empty (None: no kind)")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in job_kind):
        raise ValueError(f"job_kind must not contain control characters, got {job_kind!r}")
    return job_kind


def _request_bytes(value: Any, name: str, kind: str, default_memory_mb: Any) -> tuple[int, int]:
    """(bytes, default_bytes) for the core. ``value`` None with a kind asks for the kind's
    learned estimate (bytes 0), with ``default_memory_mb`` (MiB, None: none) as its fallback."""
    default_bytes = 0
    if default_memory_mb is not None:
        default_bytes = _check_mib(default_memory_mb, "default_memory_mb") * MiB
    if value is None:
        if not kind:
            raise TypeError(f"{name} must be an int number of MiB, got None: None asks for the "
                            f"job kind's learned estimate, so it needs job_kind=...")
        return 0, default_bytes
    return _check_mib(value, name) * MiB, default_bytes


def _check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True, False or None, got {value!r}")
    return value


# The ranges every argument is checked against here, before either mode sees it: the same in
# both, so that a value the in-process core would take and the daemon's protocol would refuse
# (or that pybind11 cannot convert) gets one answer that names the argument and the range.
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1  # the core's int (priority, max_concurrent_jobs)
#: The longest finite wait, in seconds (about 31 years): what the daemon's protocol carries.
MAX_TIMEOUT_S = 1e9


def _check_timeout(timeout: Any, name: str = "timeout") -> Optional[float]:
    """Seconds in [0, 1e9] -> float; None or inf -> None (no deadline)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, got {timeout!r}")
    try:
        seconds = float(timeout)
    except OverflowError:  # an int beyond any float
        seconds = math.inf if timeout > 0 else -math.inf
    if seconds == math.inf:
        return None
    if not 0 <= seconds <= MAX_TIMEOUT_S:  # also NaN and -inf
        raise ValueError(f"{name} must be None, inf or a number of seconds in [0, 1e9], "
                         f"got {timeout!r}")
    return seconds


def _check_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    return value


def _check_int_range(value: Any, name: str, low: int = _INT_MIN, high: int = _INT_MAX) -> int:
    value = _check_int(value, name)
    if not low <= value <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value}")
    return value


def _check_policy(value: Any, name: str, choices: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str ({choices}), got {value!r}")
    return value


def _warn_unused_settings(snap: dict[str, Any], max_concurrent_jobs: int, memory_limit: float,
                          placement: str, queue: str) -> None:
    """With the daemon its own settings apply host-wide: says so of each argument that asked
    for something else (a default that differs is no request, and says nothing)."""
    config = snap["config"]
    asked = [("max_concurrent_jobs", max_concurrent_jobs, 3, "--max-concurrent-jobs"),
             ("memory_limit", memory_limit, 0.8, "--memory-limit"),
             ("placement", placement, "best-fit", None), ("queue", queue, "backfill", None)]
    for name, value, default, flag in asked:
        applied = config[name]
        if value == default or value == applied:
            continue
        how = f" (gpumgr serve {flag})" if flag else ""
        warnings.warn(f"{name}={value!r} is not used: the {snap['source']} applies "
                      f"{applied!r} host-wide{how}", RuntimeWarning, stacklevel=3)


_order_left = _torch.set_device_order()
# The torch memory cap: the core reports lease changes to _torch; GPUMGR_LEASE_BYTES (from
# `gpumgr run`) caps this process's visible devices from now on.
_torch.install()


class GPUManager:
    """Shares this host's GPUs between jobs: VRAM leases with admission control, a fair wait
    queue, CPU fallback and statistics (see docs/python.md).

    Args:
        device: ``'auto'`` (GPUs if an NVIDIA driver is usable, else the CPU), ``'cuda'`` (any
            GPU), ``'cuda:N'`` (GPU N only) or ``'cpu'`` (host memory as one device, never a
            GPU: with a daemon that shares GPUs, host memory is this process's own). The same
            in-process and with the daemon (whose devices are then the ones that count).
        max_concurrent_jobs: how many leases may be held at once (1 to 2**31 - 1).
        memory_limit: the share of each device's memory leases may hold, in (0, 1].
        default_timeout: seconds managed_generation() waits when its timeout is None, in
            [0, 1e9]; None or inf (the default None) waits until the lease is granted.
        simulate: a GPUMGR_SIMULATE spec (``'2x24GiB'``) to use simulated devices; None reads
            the GPUMGR_SIMULATE variable.
        socket: the gpumgr daemon's socket, so that every process on the host shares one
            budget; None reads GPUMGR_SOCKET (unset: this process only).
        placement: ``'best-fit'`` (packs), ``'spread'`` or ``'first-fit'``.
        queue: ``'backfill'`` (the default), ``'fifo'`` or ``'greedy'`` (docs/scheduling.md).
        state_path: a SQLite file for the in-process history of job kinds (their learned
            estimates); None: none. The daemon keeps its own (``gpumgr serve --state-dir``).
        enforce: whether leases cap torch's caching allocator on their devices at their size
            (``torch.cuda.set_per_process_memory_fraction``); None: on, unless
            ``GPUMGR_ENFORCE=0``. allocate_job / managed_generation may override it per job.

    Raises:
        ValueError: a bad device string, max_concurrent_jobs outside [1, 2**31 - 1],
            memory_limit outside (0, 1], a bad simulate spec, default_timeout outside [0, 1e9];
            ``cuda:N`` for a device that does not exist (here, or the daemon's).
        TypeError: an argument of the wrong type.
        DeviceUnavailableError: ``'cuda'`` without a usable GPU (here, or the daemon's); no
            daemon at the socket.
        RuntimeWarning (a warning, not raised): state_path or simulate given where the daemon
            decides them.
    """

    def __init__(self, device: str = "auto", max_concurrent_jobs: int = 3,
                 memory_limit: float = 0.8, *, default_timeout: Optional[float] = None,
                 simulate: Optional[str] = None, socket: Optional[str] = None,
                 placement: str = "best-fit", queue: str = "backfill",
                 state_path: Optional[str | os.PathLike[str]] = None,
                 enforce: Optional[bool] = None) -> None:
        if not isinstance(device, str):
            raise TypeError(f"device must be a str such as 'auto', 'cuda', 'cuda:0' or 'cpu', "
                            f"got {device!r}")
        _check_int(max_concurrent_jobs, "max_concurrent_jobs")
        if max_concurrent_jobs > _INT_MAX:
            raise ValueError(f"max_concurrent_jobs must be at most {_INT_MAX}, got "
                             f"{max_concurrent_jobs}")
        _check_policy(placement, "placement", "'best-fit', 'spread' or 'first-fit'")
        _check_policy(queue, "queue", "'backfill', 'fifo' or 'greedy'")
        if simulate is not None and not isinstance(simulate, str):
            raise TypeError(f"simulate must be a str such as '2x24GiB' or None, got {simulate!r}")
        if socket is not None and not isinstance(socket, str):
            raise TypeError(f"socket must be a str or None, got {socket!r}")
        if simulate:
            _core.parse_simulate_spec(simulate)  # ValueError naming the bad spec, in both modes
        # A bad selector is refused before anything is opened or connected.
        selector_kind, selector_index = _core.parse_device_selector(device)
        if isinstance(memory_limit, bool) or not isinstance(memory_limit, (int, float)):
            raise TypeError(f"memory_limit must be a number in (0, 1], got {memory_limit!r}")
        memory_limit = float(memory_limit)
        if not (0.0 < memory_limit <= 1.0):  # also NaN
            raise ValueError(f"memory_limit must be in (0, 1], got {memory_limit}")
        if max_concurrent_jobs < 1:
            raise ValueError(f"max_concurrent_jobs must be at least 1, got {max_concurrent_jobs}")
        self._default_timeout = _check_timeout(default_timeout, "default_timeout")
        history_path = ""
        if state_path is not None:
            history_path = os.fspath(state_path)
            if not isinstance(history_path, str):
                raise TypeError(f"state_path must be a str or os.PathLike of str, got "
                                f"{state_path!r}")
            if not history_path:
                raise ValueError("state_path must not be empty (None: no history)")
        self._enforce = (_torch.enforce_default() if enforce is None
                         else _check_bool(enforce, "enforce"))
        self._requested = (device, max_concurrent_jobs, memory_limit)
        self._lock = threading.Lock()
        self._allocated: dict[str, Lease] = {}  # guarded by _lock: allocate_job()'s leases
        self._jobs_oom = 0  # guarded by _lock
        self._driver_peak: dict[int, int] = {}  # guarded by _lock
        self._torch_hooked = False

        # The core validates the selector against the daemon's devices as in-process
        # ('cuda:N' must exist, 'cuda' needs a GPU, 'cpu' is this process's host memory where
        # the daemon shares GPUs): one meaning in both modes (manager.cpp, Manager::create).
        def create(selector: str) -> Any:
            return _core.Manager(selector, max_concurrent_jobs, memory_limit,
                                 simulate=simulate or "", socket=socket or "",
                                 placement=placement, queue=queue, history_path=history_path)

        self._core = create(device)
        snap = self._core.snapshot()
        if str(snap["source"]).startswith("daemon"):
            if history_path:
                warnings.warn(f"state_path={history_path!r} is not used: the daemon keeps the "
                              "job kinds' history in its own state directory (gpumgr serve "
                              "--state-dir)", RuntimeWarning, stacklevel=2)
            if simulate:
                warnings.warn(f"simulate={simulate!r} is not used: the daemon's devices are its "
                              "own (gpumgr serve --simulate)", RuntimeWarning, stacklevel=2)
            _warn_unused_settings(snap, max_concurrent_jobs, memory_limit, placement, queue)
        self._backend = snap["backend"]["name"]
        self._device_ids = [{"index": d["index"], "uuid": d["uuid"]} for d in snap["devices"]]
        self._pinned = -1
        self._device = self._core.device
        if selector_kind == "cuda" and selector_index >= 0:
            self._pinned = selector_index
            self._device = device
        if self._backend == "nvml":
            index_map = _torch.torch_index_map(self._device_ids)
            if self._pinned >= 0 and index_map[self._pinned] != self._pinned:
                # 'cuda:K' is torch's K-th visible device: pin gpumgr's index for it instead.
                if self._pinned not in index_map:
                    raise ValueError(
                        f"device {device!r} is not visible: CUDA_VISIBLE_DEVICES="
                        f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r} exposes "
                        f"{sum(i >= 0 for i in index_map)} device(s)")
                self._pinned = index_map.index(self._pinned)
                self._core = create(f"cuda:{self._pinned}")
            self._setup_real_gpus(index_map)

        # Callbacks the core holds must not hold this object: a cycle through the extension's
        # objects is never collected.
        this = weakref.ref(self)

        def on_error(exc: BaseException, lease: Lease) -> None:
            manager = this()
            if manager is not None:
                manager._on_error(exc, lease)

        def forget(job_id: str, exc: Optional[BaseException]) -> None:
            manager = this()
            if manager is not None:
                manager._forget(job_id, exc)

        self._core.set_error_callback(on_error)
        # Revocable leases: the registry is the core's callback (it holds no manager).
        self._revocations = _revocable.Revocations()
        self._core.set_revoke_callback(self._revocations.on_revoke)
        # allocate_job()'s leases call this on release; through a weak reference, so that a
        # dropped manager releases the leases it kept (rather than a cycle keeping both).
        self._on_release = forget
        # The limits that apply: these arguments in-process, the daemon's with one.
        self._max_concurrent_jobs = int(snap["config"]["max_concurrent_jobs"])
        self._memory_limit = float(snap["config"]["memory_limit"])
        self._hook_torch()

    def _setup_real_gpus(self, index_map: list[int]) -> None:
        """Device order and visibility for real GPUs (simulated devices have no CUDA identity)."""
        if _order_left is not None:
            warnings.warn(
                f"CUDA_DEVICE_ORDER={_order_left}: torch's cuda:N may not be gpumgr's device N "
                "(PCI bus order); set CUDA_DEVICE_ORDER=PCI_BUS_ID before torch starts",
                RuntimeWarning, stacklevel=3)
        self._core._set_torch_index(index_map)
        visible = _torch.visible_devices()
        if visible is not None and self._pinned < 0 and len(visible) < len(self._device_ids):
            warnings.warn(
                f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r} hides some of "
                f"the {len(self._device_ids)} GPUs, but leases may be placed on any of them; "
                "pin this manager with device='cuda:N'", RuntimeWarning, stacklevel=3)

    # ---- attributes of the original API ----

    @property
    def device(self) -> str:
        """What torch.device accepts for this manager: ``'cuda'``, ``'cuda:N'`` or ``'cpu'``."""
        return self._device

    @property
    def max_concurrent_jobs(self) -> int:
        """How many leases may be held at once (fixed at creation): the argument in-process,
        the daemon's setting (host-wide) with the daemon."""
        return self._max_concurrent_jobs

    @property
    def memory_limit(self) -> float:
        """The share of each device's memory leases may hold (fixed at creation): the
        argument in-process, the daemon's setting with the daemon."""
        return self._memory_limit

    @property
    def default_timeout(self) -> Optional[float]:
        """Seconds managed_generation() waits when its timeout is None (None: no limit)."""
        return self._default_timeout

    @property
    def enforce(self) -> bool:
        """Whether this manager's leases cap torch's memory by default (fixed at creation)."""
        return self._enforce

    @property
    def cuda_available(self) -> bool:
        """Whether jobs run on GPUs (True for simulated GPUs; False for the CPU fallback)."""
        return bool(self._core.uses_gpu)

    @property
    def selection_note(self) -> str:
        """How the device was chosen ("auto: no NVIDIA driver (...); using the CPU")."""
        return str(self._core.selection_note)

    # ---- torch ----

    def _hook_torch(self) -> None:
        """Installs torch's cache cleanup once torch is imported (checked cheaply each job)."""
        if self._torch_hooked or _torch.loaded_torch() is None:
            return
        # Maps gpumgr's index to torch's device string without holding self or self._core
        # (the callback may outlive both, as leases may).
        names = [self._core.torch_device(d["index"]) for d in self._device_ids]

        def cleanup(device: int) -> None:
            if 0 <= device < len(names):
                _torch.empty_cache(names[device])

        self._core.set_cleanup_callback(cleanup)
        self._torch_hooked = True

    # ---- jobs ----

    def can_process_job(self, estimated_vram: int) -> bool:
        """Whether a job of ``estimated_vram`` MiB could start right now: it fits on some
        device's admissible memory and the concurrency limit allows one more job. False also
        for a job larger than every device's capacity (allocate_job says why).

        Raises:
            TypeError: estimated_vram is not an int (floats and bools are refused).
            ValueError: estimated_vram <= 0.
        """
        mib = _check_mib(estimated_vram, "estimated_vram")
        return bool(self._core.can_admit(mib * MiB))

    def allocate_job(self, job_id: str,
                     estimated_vram: Optional[int] = DEFAULT_ESTIMATED_VRAM_MB, *, gpus: int = 1,
                     priority: int = 0, job_kind: Optional[str] = None,
                     default_memory_mb: Optional[int] = None,
                     enforce: Optional[bool] = None) -> Lease:
        """Takes a lease of ``estimated_vram`` MiB (per device, on ``gpus`` devices) now, or
        raises. The manager keeps the lease until cleanup_after_job(job_id) or until it is
        released; it is also a context manager that releases it on exit.

        Args:
            job_kind: what kind of job this is (``'sdxl-1024'``): its measured peaks are
                recorded under that name. With ``estimated_vram=None`` the size is the kind's
                learned estimate (``lease.estimate`` says where it came from), else
                ``default_memory_mb``.
            enforce: cap torch's memory on the leased devices at the lease (None: the
                manager's ``enforce``).
            gpus: how many devices, 1 to the number of devices. priority: an int in
                [-2**31, 2**31 - 1], higher first.

        Raises:
            GPUCapacityError: it does not fit now (``code='resource_exhausted'``) or never
                can (``code='never_fits'``).
            DuplicateJobError: job_id is already held or waiting (a ValueError).
            TypeError / ValueError: bad arguments (``estimated_vram=None`` without a job_kind
                is a TypeError).
        """
        _check_job_id(job_id)
        kind = _check_job_kind(job_kind)
        nbytes, default_bytes = _request_bytes(estimated_vram, "estimated_vram", kind,
                                               default_memory_mb)
        self._check_gpus(gpus)
        _check_int_range(priority, "priority")
        cap = self._enforce if enforce is None else _check_bool(enforce, "enforce")
        self._hook_torch()
        lease = self._core.try_acquire(job_id, nbytes, gpus, priority, -1, "", kind,
                                       default_bytes, cap)
        with self._lock:
            self._allocated[job_id] = lease
        lease._set_on_release(self._on_release)
        return lease

    def _check_gpus(self, gpus: Any) -> None:
        """1..the number of devices, in the core's words (the daemon's protocol would say
        [1, 1024] and pybind11 could not convert a huge int)."""
        _check_int(gpus, "gpus")
        count = len(self._device_ids)
        if not 1 <= gpus <= count:
            raise ValueError(f"gpus must be between 1 and {count} (the number of devices), "
                             f"got {gpus}")

    def _forget(self, job_id: str, exc: Optional[BaseException]) -> None:
        """Runs once when an allocate_job() lease is released (exc: what ended its block)."""
        oom = _torch.is_out_of_memory(exc)
        with self._lock:
            lease = self._allocated.pop(job_id, None)
            if oom:
                self._jobs_oom += 1
        if oom and lease is not None and exc is not None:
            self._note_oom(exc, lease, released=True)

    def _note_oom(self, exc: BaseException, lease: Lease, released: bool = False) -> None:
        """Adds to torch's out-of-memory error which lease ran out: its size and the peak."""
        try:
            devices = [self._core.torch_device(d) for d in lease.devices]
            _torch.add_note(exc, _torch.oom_note(lease.job_id, lease.bytes, devices,
                                                 lease.capped, released))
        except Exception as err:  # noqa: BLE001 (the job's own error is what matters)
            _torch._report(err, "describe an out-of-memory error")

    def cleanup_after_job(self, job_id: Optional[str] = None) -> bool:
        """Releases ``job_id``'s lease if it has one, then empties torch's cache (where torch
        is loaded) after a garbage collection. With no id, only the cleanup.

        Returns True when a lease was released; False for no id or an unknown one. Never
        raises for an unknown id.
        """
        self._hook_torch()
        released = False
        if isinstance(job_id, str) and job_id:
            with self._lock:
                lease = self._allocated.get(job_id)
            if lease is not None and lease.held:
                lease.release()
                released = True
            else:
                released = bool(self._core.release(job_id))
        if self._torch_hooked:
            gc.collect()
        self._core.run_cleanup(-1)
        return released

    def managed_generation(self, job_id: str, required_memory_mb: Optional[int],
                           timeout: Optional[float] = None,
                           priority: int = 0, *, job_kind: Optional[str] = None,
                           default_memory_mb: Optional[int] = None,
                           enforce: Optional[bool] = None, preemptible: bool = False,
                           on_preempt: Optional[Callable[[dict[str, Any]], Any]] = None,
                           revoke_grace: Optional[float] = None,
                           resident: Optional[ResidentModel | str] = None
                           ) -> ContextManager[Lease]:
        """A context manager that waits for a lease of ``required_memory_mb`` MiB, yields it
        (``lease.device`` is the torch device string), and releases it on exit whatever
        happens. A block that raises counts the job as failed; a torch CUDA out-of-memory
        error is also counted as such (``jobs_oom``), gets a note naming the lease, its size
        and torch's peak, torch's cache is emptied, and the error propagates (its own type).

        While the lease is held, torch's caching allocator on the leased device is capped at
        the lease (summed over this process's leases there), unless enforce is off.

        Args:
            timeout: seconds to wait, in [0, 1e9]; None: the manager's default_timeout; inf:
                no deadline; 0: do not wait.
            priority: higher is served first; an int in [-2**31, 2**31 - 1].
            job_kind: the job's kind (``'sdxl-1024'``): its peaks are recorded under it, and
                ``required_memory_mb=None`` asks for its learned estimate (``lease.estimate``
                says where the size came from), else ``default_memory_mb``.
            enforce: cap torch at the lease (None: the manager's ``enforce``).
            preemptible: the lease may be revoked for a job of higher priority that cannot
                fit otherwise (docs/scheduling.md, "Revocable leases"). Then LeasePreempted is
                raised in the block's thread at its next check (after ``on_preempt(notice)``
                returns, when given: it runs on a thread of its own, e.g. to checkpoint), and
                the lease is released as the block ends. The block should end within the
                grace (``revoke_grace`` seconds, else the ledger's): past it, the in-process
                ledger releases the lease, and the daemon kills this process.
            resident: the resident model (a ResidentModel, or its name) the job runs beside:
                the lease goes on the model's device only, the model is never revoked for
                this job while it waits (other residents there may be), and its grant counts
                as a ``use()`` of the model. The model must be resident now.

        Raises (on entering the block):
            QueueTimeoutError: the timeout passed first.
            GPUCapacityError: the job is larger than every device's capacity.
            DuplicateJobError, TypeError, ValueError: bad arguments; ValueError also when
                ``resident`` names no resident now (``no resident 'NAME' to run beside``).
            GPUManagerError: ``resident`` is being revoked (code ``failed_precondition``).
            JobCancelledError: cancel(job_id) was called while it waited.
            GPUManagerError: ``required_memory_mb=None`` and the kind has no estimate yet
                (too few runs) and no ``default_memory_mb``.
        """
        _check_job_id(job_id)
        if job_kind is None and default_memory_mb is None and required_memory_mb is not None:
            nbytes, kind, default_bytes = _check_mib(required_memory_mb,
                                                     "required_memory_mb") * MiB, "", 0
        else:
            kind = _check_job_kind(job_kind)
            nbytes, default_bytes = _request_bytes(required_memory_mb, "required_memory_mb",
                                                   kind, default_memory_mb)
        wait = self._default_timeout if timeout is None else _check_timeout(timeout)
        _check_int_range(priority, "priority")
        cap = self._enforce if enforce is None else _check_bool(enforce, "enforce")
        _check_bool(preemptible, "preemptible")
        if on_preempt is not None and not callable(on_preempt):
            raise TypeError(f"on_preempt must be callable or None, got {on_preempt!r}")
        if (on_preempt is not None or revoke_grace is not None) and not preemptible:
            raise ValueError("on_preempt and revoke_grace need preemptible=True")
        grace = _revocable.check_grace(revoke_grace)
        beside = _revocable.beside_name(resident)
        if not self._torch_hooked:
            self._hook_torch()
        if not preemptible:
            return self._core.generation(job_id, nbytes, wait, priority, kind, default_bytes, cap,
                                         False, None, beside)
        generation = self._core.generation(job_id, nbytes, wait, priority, kind, default_bytes,
                                           cap, True, grace, beside)
        self._revocations.add_generation(job_id, generation, on_preempt)
        return generation

    def keep_resident(self, name: str, required_memory_mb: int,
                      unload: Optional[Callable[[], Any]] = None, *, priority: int = 0,
                      revoke_grace: Optional[float] = None) -> ResidentModel:
        """Keeps an idle model resident: takes a lease of ``required_memory_mb`` MiB now
        (job id ``"resident:" + name``) that is revoked, least recently used resident first
        and before any preemptible job, when a job of at least ``priority`` cannot fit
        otherwise. Then ``unload()`` runs on a thread of its own (free the model there) and
        the lease is released; the waiting job gets the memory. Call ``use()`` on the handle
        whenever the model serves.

        Raises:
            DuplicateJobError: a resident of this name already exists (a ValueError).
            GPUCapacityError: it does not fit now.
            TypeError / ValueError: an empty name, control characters in it, a bad size,
                unload not callable, a bad revoke_grace.
        """
        _revocable.check_resident_name(name)
        nbytes = _check_mib(required_memory_mb, "required_memory_mb") * MiB
        if unload is not None and not callable(unload):
            raise TypeError(f"unload must be callable or None, got {unload!r}")
        _check_int_range(priority, "priority")
        grace = _revocable.check_grace(revoke_grace)
        self._hook_torch()
        lease = self._core.try_acquire("resident:" + name, nbytes, 1, priority, -1, "", "", 0,
                                       self._enforce, name, False, grace)
        resident = ResidentModel(self._core, self._revocations, name, lease, unload)
        self._revocations.add_resident(resident)
        return resident

    def revoke(self, job_id: str) -> None:
        """Revokes a revocable lease now (a preemptible block or a resident), as a waiter
        that needs its memory would. Raises ValueError for no such lease, GPUManagerError
        (``code == "failed_precondition"``) for one that is not revocable or is already being
        revoked."""
        _check_job_id(job_id)
        self._core.revoke(job_id)

    def _on_error(self, exc: BaseException, lease: Optional[Lease] = None) -> None:
        """Runs when a managed_generation() block raises, before its lease is released."""
        if _torch.is_out_of_memory(exc):
            with self._lock:
                self._jobs_oom += 1
            if lease is not None:
                self._note_oom(exc, lease)
            # The release that follows runs the cleanup hook: torch's cache is emptied.
            self._hook_torch()

    # ---- job kinds ----

    def get_estimates(self) -> list[dict[str, Any]]:
        """What the history says of each job kind, in name order: ``kind``, ``runs``,
        ``measured_runs``, ``peak_p50_bytes``, ``peak_p95_bytes``, ``peak_max_bytes``,
        ``hold_p50_s``, ``hold_p95_s``, ``overused_runs``, ``last_seen`` (Unix seconds),
        ``estimate_bytes`` (what ``required_memory_mb=None`` asks for; None while too few runs
        were measured) and ``estimate_note``. None where unknown. Empty without a history
        (no ``state_path`` in-process)."""
        return [dict(e) for e in self._core.estimates()]

    def forget_estimates(self, job_kind: str) -> bool:
        """Forgets a job kind's history (its next ``None`` size starts from its default).
        Returns False when the kind has none."""
        kind = _check_job_kind(job_kind)
        if not kind:
            raise TypeError("job_kind must be a str, got None")
        return bool(self._core.forget_kind(kind))

    def cancel(self, job_id: str) -> bool:
        """Cancels a waiting request (its waiter raises JobCancelledError). False when no such
        job waits."""
        _check_job_id(job_id)
        return bool(self._core.cancel(job_id))

    # ---- figures ----

    def _my_devices(self, snap: dict[str, Any]) -> list[dict[str, Any]]:
        devices: list[dict[str, Any]] = snap["devices"]
        if self._pinned >= 0:
            return [d for d in devices if d["index"] == self._pinned]
        return devices

    @staticmethod
    def _utilization(devices: list[dict[str, Any]]) -> Optional[float]:
        values = [d["gpu_utilization"] for d in devices if d["gpu_utilization"] is not None]
        if not values:
            return None
        return float(sum(values)) / len(values)

    def get_utilization(self) -> Optional[float]:
        """GPU utilisation in percent (0-100): the manager's device, or the mean over its
        devices; None where no device reports it (the CPU device)."""
        return self._utilization(self._my_devices(self._core.snapshot()))

    def _process_memory(self, devices: list[dict[str, Any]]) -> tuple[int, int, int, str]:
        """(allocated, reserved, max_allocated, source) for this process on ``devices``."""
        if self._core.uses_gpu:
            figures = []
            for d in devices:
                torch_device = self._core.torch_device(d["index"])
                f = _torch.memory_figures(torch_device)
                if f is not None:
                    self._core.set_framework_memory(d["index"], *f)
                    figures.append(f)
            if figures:
                return (sum(f[0] for f in figures), sum(f[1] for f in figures),
                        sum(f[2] for f in figures), "torch")
        pid = os.getpid()
        known = [d for d in devices if d["processes_known"]]
        if known:
            total = 0
            with self._lock:
                for d in known:
                    used = sum(b for p, b in d["processes"] if p == pid)
                    peak = max(self._driver_peak.get(d["index"], 0), used)
                    self._driver_peak[d["index"]] = peak
                    total += used
                peak_total = sum(self._driver_peak.get(d["index"], 0) for d in known)
            return total, total, peak_total, "driver"
        return 0, 0, 0, "none"

    def get_memory_info(self) -> dict[str, Any]:
        """Memory of the manager's devices (summed over them), in bytes.

        ``total``, ``free``, ``used``: what the driver reports for the devices. ``leased``: held
        by leases. ``capacity``: memory_limit x total. ``allocated``, ``reserved``,
        ``max_allocated``: this process's figures, from torch where it is loaded and has
        initialised CUDA (memory_allocated / memory_reserved / max_memory_allocated), else this
        process's usage as the driver reports it (all three the same, max_allocated the peak
        seen by these calls), else 0. ``source`` says which: "torch", "driver" or "none".
        """
        self._hook_torch()
        devices = self._my_devices(self._core.snapshot())
        allocated, reserved, peak, source = self._process_memory(devices)
        return {
            "total": sum(d["total_bytes"] for d in devices),
            "free": sum(d["free_bytes"] for d in devices),
            "used": sum(d["used_bytes"] for d in devices),
            "allocated": allocated,
            "reserved": reserved,
            "max_allocated": peak,
            "leased": sum(d["leased_bytes"] for d in devices),
            "capacity": sum(d["capacity_bytes"] for d in devices),
            "admissible": sum(d["admissible_bytes"] for d in devices),
            "source": source,
        }

    def get_gpu_stats(self) -> dict[str, Any]:
        """The manager's devices, leases and job statistics. Memory in bytes; see
        docs/python.md for every key."""
        snap = self._core.snapshot()
        devices = self._my_devices(snap)
        stats = snap["stats"]
        names = list(dict.fromkeys(d["name"] for d in devices))
        with self._lock:
            oom = self._jobs_oom
        per_device = []
        for d in devices:
            per_device.append({
                "index": d["index"],
                "device": self._core.torch_device(d["index"]),
                "name": d["name"],
                "kind": d["kind"],
                "uuid": d["uuid"],
                "pci_bus_id": d["pci_bus_id"],
                "total_memory": d["total_bytes"],
                "used_memory": d["used_bytes"],
                "free_memory": d["free_bytes"],
                "capacity": d["capacity_bytes"],
                "leased_memory": d["leased_bytes"],
                "foreign_memory": d["foreign_bytes"],
                "admissible_memory": d["admissible_bytes"],
                "overuse_memory": d.get("overuse_bytes", 0),
                "peak_leased_memory": d["peak_leased_bytes"],
                "active_leases": d["active_leases"],
                "utilization": d["gpu_utilization"],
                "memory_utilization": d["memory_utilization"],
                "temperature": d["temperature_c"],
                "power_draw_w": d["power_draw_w"],
                "power_limit_w": d["power_limit_w"],
                "compute_capability": d["compute_capability"],
                "healthy": d["healthy"],
                "health_reason": d["health_reason"],
            })
        return {
            "device": self._device,
            "device_name": ", ".join(names),
            "backend": snap["backend"]["name"],
            "source": snap["source"],
            "cuda_available": self.cuda_available,
            "total_memory": sum(d["total_bytes"] for d in devices),
            "used_memory": sum(d["used_bytes"] for d in devices),
            "free_memory": sum(d["free_bytes"] for d in devices),
            "leased_memory": sum(d["leased_bytes"] for d in devices),
            "capacity": sum(d["capacity_bytes"] for d in devices),
            "utilization": self._utilization(devices),
            "active_jobs": stats["active_jobs"],
            "peak_active_jobs": stats["peak_active_jobs"],
            "queued_jobs": len(snap["queue"]),
            "max_concurrent_jobs": self._max_concurrent_jobs,
            "memory_limit": self._memory_limit,
            "jobs_processed": stats["jobs_processed"],
            "jobs_succeeded": stats["jobs_succeeded"],
            "jobs_failed": stats["jobs_failed"],
            "jobs_rejected": stats["jobs_rejected"],
            "jobs_timed_out": stats["jobs_timed_out"],
            "jobs_cancelled": stats["jobs_cancelled"],
            "jobs_oom": oom,
            "overuse_events": stats.get("overuse_events", 0),
            "devices": per_device,
            "leases": self._lease_stats(snap, devices),
        }

    def _lease_stats(self, snap: dict[str, Any],
                     devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """get_gpu_stats()['leases']: each lease on the manager's devices, with what its
        holder uses (measured; None where unknown, never 0 for unknown)."""
        mine = {d["index"] for d in devices}
        torch_device = self._core.torch_device
        out = []
        for lease in snap["leases"]:
            if not mine.intersection(lease["devices"]):
                continue
            usage = lease.get("usage") or [
                {"device": d, "used_bytes": None, "peak_used_bytes": None}
                for d in lease["devices"]]
            out.append({
                "job_id": lease["job_id"],
                "kind": lease.get("kind"),
                "devices": list(lease["devices"]),
                "device": torch_device(lease["devices"][0]) if lease["devices"] else None,
                "leased_memory": lease["bytes"],
                "memory_mb": lease["bytes"] // MiB,
                "usage": [{"index": u["device"], "device": torch_device(u["device"]),
                           "used_memory": u["used_bytes"],
                           "peak_used_memory": u["peak_used_bytes"]} for u in usage],
                "overused": bool(lease.get("overused", False)),
                "overused_s": float(lease.get("overused_s", 0.0)),
                "estimate": lease.get("estimate", ""),
                "enforcement": lease.get("enforcement", ""),
                "priority": lease["priority"],
                "pid": lease["pid"],
                "held_s": max(0.0, float(snap["taken_at"]) - float(lease["granted_at"])),
            })
        return out

    def snapshot(self) -> dict[str, Any]:
        """Everything the core knows: backend, config, every device's accounting, leases,
        the queue and statistics (histograms included), as plain dicts; memory in bytes."""
        return dict(self._core.snapshot())

    def synchronize(self, device: Optional[int] = None) -> None:
        """Waits until all work on ``device`` (gpumgr's index; None: the manager's device, or
        device 0) has finished: torch.cuda.synchronize where torch drives CUDA, else the CUDA
        driver. A no-op on the CPU device and on simulated devices."""
        if device is None:
            device = max(self._pinned, 0)
        _check_int(device, "device")
        if not self._core.uses_gpu:
            return
        if not 0 <= device < len(self._device_ids):
            raise ValueError(f"device {device} does not exist; devices are "
                             f"0..{len(self._device_ids) - 1}")
        if _torch.synchronize(self._core.torch_device(device)):
            return
        self._core.synchronize(device)

    def __repr__(self) -> str:
        return (f"GPUManager(device={self._device!r}, max_concurrent_jobs="
                f"{self._max_concurrent_jobs}, memory_limit={self._memory_limit})")


_instance: Optional[GPUManager] = None
_instance_lock = threading.Lock()


def get_gpu_manager(device: str = "auto", max_concurrent_jobs: int = 3,
                    memory_limit: float = 0.8, **kwargs: Any) -> GPUManager:
    """The process-wide GPUManager: created by the first call with its arguments; every later
    call returns the same object. A later call whose arguments differ gets a RuntimeWarning
    naming the difference (the existing manager is kept). Thread-safe.

    Extra keyword arguments (default_timeout, simulate, socket, ...) go to GPUManager.
    """
    global _instance
    with _instance_lock:
        if _instance is None:
            _instance = GPUManager(device, max_concurrent_jobs, memory_limit, **kwargs)
            _instance._singleton_kwargs = dict(kwargs)  # type: ignore[attr-defined]
            return _instance
        existing = _instance
    in_use = dict(zip(("device", "max_concurrent_jobs", "memory_limit"), existing._requested))
    in_use.update(getattr(existing, "_singleton_kwargs", {}))
    asked: dict[str, Any] = {"device": device, "max_concurrent_jobs": max_concurrent_jobs,
                             "memory_limit": memory_limit, **kwargs}
    diffs = [f"{k}: {in_use.get(k)!r} in use, {v!r} requested" for k, v in asked.items()
             if in_use.get(k) != v]
    if diffs:
        warnings.warn("get_gpu_manager: the process-wide manager already exists and is "
                      "returned unchanged; " + "; ".join(diffs), RuntimeWarning, stacklevel=2)
    return existing


def _reset_gpu_manager() -> None:
    """Forgets the process-wide manager (for tests). Leases it granted stay valid."""
    global _instance
    with _instance_lock:
        _instance = None

