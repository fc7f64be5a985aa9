"""PyTorch integration, used only where torch is already imported.

gpu_manager never imports torch itself (importing it takes seconds and initialises nothing we
need): every function here looks for ``sys.modules["torch"]`` and does nothing without it. It
also never initialises CUDA on torch's behalf: cache cleanup and memory figures apply only once
the process has used CUDA through torch.

The memory cap. While this process holds leases on a device, torch's caching allocator there
is capped at their sum (``torch.cuda.set_per_process_memory_fraction(sum / total)``), and set
back to 1.0 when the last one ends, so that a job that outgrows its lease gets torch's
out-of-memory error inside its own job instead of taking memory promised to others. Setting
the fraction initialises CUDA (torch's lazy init, and a context on the device), so it is done
only where torch has already initialised CUDA; otherwise it is deferred:

- torch imported, CUDA not initialised: one call queued with ``torch.cuda._lazy_call`` (the
  hook torch itself uses for seeds), which torch runs when the process first uses CUDA, so the
  cap is in place before the job's first allocation;
- torch not imported: a one-shot import hook (a ``sys.meta_path`` finder) that, once
  ``import torch`` completes, queues that same call.

The core (gpu_manager._core) keeps the sums per torch device, with a version that every change
bumps, and calls :func:`caps_changed` after each change; no lock is held while torch is called
(torch's own initialisation lock runs the queued call), and an applier re-reads the sum until
its version did not move while it called torch, so concurrent leases from several threads end
with the right fraction. ``GPUMGR_LEASE_BYTES`` (set by ``gpumgr run``) adds a fixed cap on
each device the process sees, read at import; ``GPUMGR_ENFORCE=0`` turns every cap off.

Device numbering. gpumgr numbers devices in PCI bus order, as nvidia-smi does. torch's
``cuda:N`` counts the devices CUDA makes visible (CUDA_VISIBLE_DEVICES), in the order
CUDA_DEVICE_ORDER names, which defaults to FASTEST_FIRST. gpu_manager sets
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` at import where it is unset (before torch initialises CUDA,
as long as gpu_manager is imported first), and maps gpumgr's indices through
CUDA_VISIBLE_DEVICES (:func:`torch_index_map`).
"""

from __future__ import annotations

import os
import sys
import threading
import types
import warnings
from types import ModuleType
from typing import Any, Callable, Iterable, Mapping, Sequence

from . import _core


def loaded_torch() -> ModuleType | None:
    """torch, if this process has imported it; else None (never imports it)."""
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "cuda"):
        return None
    return torch


def cuda_ready(torch: ModuleType) -> bool:
    """Whether torch has CUDA devices and has initialised CUDA in this process."""
    try:
        cuda = torch.cuda
        return bool(cuda.is_available()) and bool(cuda.is_initialized())
    except Exception:  # a broken or partial torch install: treat as absent
        return False


def _torch_index(device: str) -> int | None:
    """'cuda:3' -> 3; None for 'cpu' and anything else."""
    if not device.startswith("cuda:"):
        return None
    try:
        return int(device[5:])
    except ValueError:
        return None


def _cuda_device(device: str) -> tuple[Any, int] | None:
    """(torch, N) for ``device`` 'cuda:N' where torch is loaded, CUDA is initialised and N is
    one of torch's devices; else None."""
    torch = loaded_torch()
    index = _torch_index(device)
    if torch is None or index is None or not cuda_ready(torch):
        return None
    if index >= torch.cuda.device_count():
        return None
    return torch, index


def empty_cache(device: str) -> bool:
    """Empties torch's CUDA cache on ``device`` ('cuda:N'). Returns whether it did: False
    without torch, without CUDA initialised, for 'cpu' or for a device torch does not have."""
    found = _cuda_device(device)
    if found is None:
        return False
    torch, index = found
    with torch.cuda.device(index):
        torch.cuda.empty_cache()
    return True


def memory_figures(device: str) -> tuple[int, int, int] | None:
    """torch's (allocated, reserved, max_allocated) bytes on ``device`` for this process, or
    None where torch is not loaded, CUDA is not initialised or the device is not torch's."""
    try:
        found = _cuda_device(device)
        if found is None:
            return None
        torch, index = found
        return (
            int(torch.cuda.memory_allocated(index)),
            int(torch.cuda.memory_reserved(index)),
            int(torch.cuda.max_memory_allocated(index)),
        )
    except Exception:
        return None


def synchronize(device: str) -> bool:
    """torch.cuda.synchronize on ``device`` where torch drives it; returns whether it did."""
    found = _cuda_device(device)
    if found is None:
        return False
    torch, index = found
    torch.cuda.synchronize(index)
    return True


def is_out_of_memory(exc: BaseException | None) -> bool:
    """Whether ``exc`` is torch's CUDA out-of-memory error (torch.cuda.OutOfMemoryError, or
    the RuntimeError older torch raised, "CUDA out of memory")."""
    if exc is None:
        return False
    torch = loaded_torch()
    if torch is None:
        return False
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if isinstance(oom_type, type) and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "CUDA out of memory" in str(exc)


def add_note(exc: BaseException, note: str) -> None:
    """Adds ``note`` to ``exc``, keeping its type and identity: BaseException.add_note on
    Python 3.11+ (tracebacks and logging show it under the message); before that, the note is
    appended to the message (``args[0]``)."""
    adder = getattr(exc, "add_note", None)
    if adder is not None:
        adder(note)
        return
    if exc.args and isinstance(exc.args[0], str):  # pragma: no cover (Python < 3.11)
        exc.args = (f"{exc.args[0]}\n{note}",) + tuple(exc.args[1:])
    else:  # pragma: no cover
        exc.args = tuple(exc.args) + (note,)


def peak_reserved(device: str) -> int | None:
    """torch's peak reserved bytes (``max_memory_reserved``) on ``device`` ('cuda:N') in this
    process, or None where torch has not initialised CUDA or lacks the figure."""
    try:
        found = _cuda_device(device)
        if found is None:
            return None
        torch, index = found
        return int(torch.cuda.max_memory_reserved(index))
    except Exception:
        return None


def oom_note(job_id: str, nbytes: int, devices: Sequence[str], capped: bool,
             released: bool = False) -> str:
    """What gpu_manager adds to torch's out-of-memory error of a job: its lease, the lease's
    size and torch's peak on the leased devices. ``released``: the lease no longer counts
    toward the cap (its sum is added back to say what the cap was)."""
    size = _core.format_bytes(nbytes)
    where = ", ".join(devices) if devices else "no device"
    peaks = [peak_reserved(d) for d in devices]
    if all(p is None for p in peaks):
        peak = "peak unknown: torch has not initialised CUDA"
    elif len(devices) == 1:
        peak = f"peak {_core.format_bytes(peaks[0] or 0)} reserved by torch"
    else:
        peak = "peak reserved by torch: " + ", ".join(
            f"{d} {'unknown' if p is None else _core.format_bytes(p)}"
            for d, p in zip(devices, peaks))
    per = " per device" if len(devices) > 1 else ""
    if not capped:
        return (f"gpu_manager: job {job_id!r} ran out of memory on {where} while holding a "
                f"lease of {size}{per} ({peak}; torch was not capped at the lease)")
    shared = []
    for d in devices:
        index = _torch_index(d)
        held = cap_bytes(index) + (nbytes if released else 0) if index is not None else 0
        if held > nbytes:
            shared.append(f"{d} {_core.format_bytes(held)}")
    extra = ""
    if shared:
        extra = ("; this process's leases together cap torch at " + ", ".join(shared))
    return (f"gpu_manager: job {job_id!r} ran out of its lease of {size}{per} on {where} "
            f"({peak}{extra}): ask for more memory, or use a job_kind to learn its size")


def visible_devices(env: Mapping[str, str] = os.environ) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as CUDA reads it: None when unset, else its entries up to the first
    invalid one (CUDA ignores the rest): integers, or GPU-/MIG- UUID prefixes."""
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    entries: list[str] = []
    for item in raw.split(","):
        item = item.strip()
        if item.isdigit():
            entries.append(str(int(item)))
        elif item.startswith(("GPU-", "MIG-")) and len(item) > 4:
            entries.append(item)
        else:
            break
    return entries


def torch_index_map(devices: Sequence[Mapping[str, Any]],
                    env: Mapping[str, str] = os.environ) -> list[int]:
    """For each gpumgr device (dicts with ``index`` and ``uuid``, in gpumgr's order), torch's
    cuda index, or -1 where CUDA_VISIBLE_DEVICES hides it.

    Without CUDA_VISIBLE_DEVICES, gpumgr's index is torch's (given CUDA_DEVICE_ORDER=PCI_BUS_ID).
    Integer entries name devices by that same PCI-order index; GPU- entries by UUID prefix.
    MIG instances cannot be matched and leave their device at -1.
    """
    visible = visible_devices(env)
    if visible is None:
        return [int(d["index"]) for d in devices]
    result = [-1] * len(devices)
    for position, entry in enumerate(visible):
        for slot, d in enumerate(devices):
            if entry.isdigit():
                matched = int(entry) == int(d["index"])
            else:
                matched = entry.startswith("GPU-") and str(d["uuid"]).startswith(entry)
            if matched and result[slot] == -1:
                result[slot] = position
                break
    return result


def set_device_order(env: dict[str, str] | Any = os.environ) -> str | None:
    """Sets CUDA_DEVICE_ORDER=PCI_BUS_ID where unset. Returns the order left in place when it
    differs (so that callers can warn), else None."""
    order = env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    return None if order == "PCI_BUS_ID" else order


# ---- the memory cap ----

_OFF = {"0", "false", "no", "off"}


def enforce_default(env: Mapping[str, str] = os.environ) -> bool:
    """Whether caps apply by default: GPUMGR_ENFORCE unset, or anything but 0/false/no/off."""
    return env.get("GPUMGR_ENFORCE", "1").strip().lower() not in _OFF


_lock = threading.Lock()
_applied: dict[int, float] = {}  # guarded by _lock: the fraction last set per torch device
_totals: dict[int, int] = {}  # guarded by _lock: get_device_properties(N).total_memory
_lazy_pending = False  # guarded by _lock: a _lazy_call is queued and has not run yet
_hook: "_TorchImportHook | None" = None  # guarded by _lock: armed while torch is not imported
# From GPUMGR_LEASE_BYTES, fixed at import: bytes per torch device, and bytes for every device
# torch has (where the variable came without a device list).
_env_caps: dict[int, int] = {}
_env_every_device = 0


def cap_bytes(index: int) -> int:
    """What this process's leases (and GPUMGR_LEASE_BYTES) hold on torch's cuda:``index``."""
    return int(_core._cap_state(index)[0]) + _env_caps.get(index, _env_every_device)


def applied_fractions() -> dict[int, float]:
    """The fraction gpu_manager last set on each torch device (tests, diagnostics)."""
    with _lock:
        return dict(_applied)


def _report(exc: BaseException, what: str) -> None:
    """Reports a failure of the cap through sys.unraisablehook: it must never fail a job."""
    sys.unraisablehook(types.SimpleNamespace(  # type: ignore[arg-type]
        exc_type=type(exc), exc_value=exc, exc_traceback=exc.__traceback__,
        err_msg=f"gpu_manager could not {what}", object=None))


def _cuda_initialized(torch: Any) -> bool:
    try:
        return bool(torch.cuda.is_initialized())
    except Exception:
        return False


def _total(torch: Any, index: int) -> int:
    with _lock:
        total = _totals.get(index)
    if total is None:
        total = int(torch.cuda.get_device_properties(index).total_memory)
        with _lock:
            _totals[index] = total
    return total


def _apply_device(torch: Any, index: int) -> None:
    """Sets torch's fraction on cuda:``index`` to what is capped there now. CUDA must be
    initialised. Loops until the sum did not change while torch was being called."""
    cuda = torch.cuda
    setter = getattr(cuda, "set_per_process_memory_fraction", None)
    if setter is None or index >= int(cuda.device_count()):
        return
    while True:
        held, version = _core._cap_state(index)
        want = int(held) + _env_caps.get(index, _env_every_device)
        with _lock:
            applied = _applied.get(index)
        target: float | None
        if want <= 0:
            target = 1.0 if applied is not None and applied != 1.0 else None
        else:
            total = _total(torch, index)
            target = min(1.0, want / total) if total > 0 else 1.0
            if target == applied:
                target = None
        if target is not None:
            setter(float(target), index)
            with _lock:
                _applied[index] = float(target)
        if _core._cap_state(index)[1] == version:
            return


def _every_device(torch: Any) -> Iterable[int]:
    """The devices any cap ever touched (those at 1.0 included, to be restored)."""
    devices = {int(d) for d, _ in _core._cap_devices()}
    devices.update(_env_caps)
    with _lock:
        devices.update(_applied)
    if _env_every_device:
        try:
            devices.update(range(int(torch.cuda.device_count())))
        except Exception:
            pass
    return sorted(devices)


def _apply(torch: Any, devices: Iterable[int] | None) -> None:
    for index in (_every_device(torch) if devices is None else devices):
        _apply_device(torch, index)


def _on_cuda_init() -> None:
    """Queued with torch.cuda._lazy_call: runs inside torch's CUDA initialisation. Never
    raises (torch would turn that into an error of the user's first CUDA call)."""
    global _lazy_pending
    with _lock:
        _lazy_pending = False
    try:
        torch = loaded_torch()
        if torch is not None:
            _apply(torch, None)
    except Exception as exc:  # noqa: BLE001
        _report(exc, "cap torch's memory at CUDA initialisation")


def _queue_lazy(torch: Any) -> None:
    """Asks torch to run _on_cuda_init when it initialises CUDA (at once if it has)."""
    global _lazy_pending
    lazy_call: Callable[[Callable[[], None]], None] | None = getattr(
        torch.cuda, "_lazy_call", None)
    if lazy_call is None:
        return  # this torch cannot defer: the cap applies at the next change after init
    with _lock:
        if _lazy_pending:
            return
        _lazy_pending = True
    try:
        lazy_call(_on_cuda_init)
    except Exception:
        with _lock:
            _lazy_pending = False
        raise


def caps_changed(devices: Sequence[int] | None = None) -> None:
    """Called by the core after the capped sum of ``devices`` (torch indices; None: all)
    changed, and at import for GPUMGR_LEASE_BYTES. Applies now where torch has initialised
    CUDA; else defers, never initialising CUDA itself."""
    try:
        torch = loaded_torch()
        if torch is None:
            _arm_import_hook()
        elif _cuda_initialized(torch):
            _apply(torch, devices)
        else:
            _queue_lazy(torch)
    except Exception as exc:  # noqa: BLE001
        _report(exc, "cap torch's memory at the lease")


class _TorchImportHook:
    """A one-shot sys.meta_path finder: when ``import torch`` has run torch's __init__, it
    queues the cap (``_lazy_call``) and takes itself off the path. It finds torch's spec with
    the other finders and wraps only that spec's loader's exec_module (an attribute of the
    loader instance, deleted afterwards), so torch's module, spec and loader are the usual
    ones."""

    def __init__(self) -> None:
        self._busy = threading.local()

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "torch" or getattr(self._busy, "on", False):
            return None
        self._busy.on = True
        try:
            spec = None
            for finder in list(sys.meta_path):
                if finder is self:
                    continue
                find = getattr(finder, "find_spec", None)
                if find is None:
                    continue
                spec = find(name, path, target)
                if spec is not None:
                    break
        finally:
            self._busy.on = False
        loader = getattr(spec, "loader", None) if spec is not None else None
        original = getattr(loader, "exec_module", None)
        if original is None or isinstance(loader, type):
            return spec  # nothing to wrap safely: the next lease change after import applies

        def exec_module(module: ModuleType) -> None:
            if getattr(module, "__name__", None) != "torch":  # a loader shared with others
                original(module)
                return
            try:
                original(module)
            finally:
                try:
                    del loader.exec_module  # type: ignore[union-attr]
                except AttributeError:
                    pass
            try:
                _torch_imported()
            except Exception as exc:  # noqa: BLE001 (never fail torch's import)
                _report(exc, "cap torch's memory after import torch")

        try:
            loader.exec_module = exec_module  # type: ignore[union-attr]
        except (AttributeError, TypeError):
            pass
        return spec


def _arm_import_hook() -> None:
    global _hook
    with _lock:
        if _hook is not None:
            return
        _hook = _TorchImportHook()
        sys.meta_path.insert(0, _hook)
        _core._set_torch_import_hook_armed(True)


def _disarm_import_hook() -> None:
    global _hook
    with _lock:
        hook, _hook = _hook, None
        _core._set_torch_import_hook_armed(False)
        if hook is not None:
            try:
                sys.meta_path.remove(hook)
            except ValueError:
                pass


def _torch_imported() -> None:
    _disarm_import_hook()
    if any(b for _, b in _core._cap_devices()) or _env_caps or _env_every_device:
        caps_changed(None)


def read_env_caps(env: Mapping[str, str] = os.environ) -> None:
    """GPUMGR_LEASE_BYTES (``gpumgr run`` sets it: the lease's bytes per device): caps every
    device this process sees at that size, unless GPUMGR_ENFORCE=0. The devices: one per
    CUDA_VISIBLE_DEVICES entry (``gpumgr run`` sets it to the leased GPUs, cuda:0..k-1), else
    GPUMGR_LEASE_DEVICES' indices, else every device torch has. A bad value warns."""
    global _env_every_device
    raw = env.get("GPUMGR_LEASE_BYTES")
    if raw is None or not raw.strip() or not enforce_default(env):
        return
    try:
        nbytes = int(raw.strip())
        if nbytes <= 0:
            raise ValueError
    except ValueError:
        warnings.warn(f"GPUMGR_LEASE_BYTES={raw!r} is not a positive number of bytes: torch's "
                      "memory is not capped", RuntimeWarning, stacklevel=2)
        return
    visible = visible_devices(env)
    lease_devices = env.get("GPUMGR_LEASE_DEVICES")
    if visible is not None:
        indices = list(range(len(visible)))
    elif lease_devices:
        try:
            indices = [int(x) for x in lease_devices.split(",") if x.strip()]
        except ValueError:
            warnings.warn(f"GPUMGR_LEASE_DEVICES={lease_devices!r} is not a list of device "
                          "indices: torch's memory is not capped", RuntimeWarning, stacklevel=2)
            return
    else:
        indices = []
        _env_every_device = nbytes
    for index in indices:
        _env_caps[index] = nbytes
    if indices or _env_every_device:
        caps_changed(None)


def install() -> None:
    """At import: the core reports cap changes to caps_changed; GPUMGR_LEASE_BYTES is read."""
    _core._set_cap_callback(caps_changed)
    read_env_caps()


def _reset_for_tests() -> None:
    """Forgets what was set on torch (the tests swap fake torch modules between tests)."""
    global _lazy_pending
    with _lock:
        _applied.clear()
        _totals.clear()
        _lazy_pending = False
