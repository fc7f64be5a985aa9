"""PyTorch integration, used only where torch is already imported.

gpu_manager never imports torch itself (importing it takes seconds and initialises nothing we
need): every function here looks for ``sys.modules["torch"]`` and does nothing without it. It
also never initialises CUDA on torch's behalf: cache cleanup and memory figures apply only once
the process has used CUDA through torch.

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
from types import ModuleType
from typing import Any, Mapping, Sequence


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
