"""gpu_manager: GPU resource management for ML services, on the C++ core libgpumgr.

    from gpu_manager import GPUManager, get_gpu_manager

    manager = get_gpu_manager(max_concurrent_jobs=3, memory_limit=0.8)
    with manager.managed_generation("job-42", required_memory_mb=6000) as lease:
        model.to(lease.device)   # 'cuda:N' or 'cpu'
        ...

Memory arguments are MiB (the original API's "MB"); memory figures are bytes. Devices come from
the NVIDIA driver (NVML), from GPUMGR_SIMULATE=2x24GiB (simulated), or the CPU; with
GPUMGR_SOCKET set, every process on the host shares the gpumgr daemon's budget. Full reference:
docs/python.md.

Importing gpu_manager sets CUDA_DEVICE_ORDER=PCI_BUS_ID where it is unset, so that torch's
cuda:N is gpumgr's (and nvidia-smi's) device N; import it before torch initialises CUDA.

While this process holds leases on a device, torch's caching allocator there is capped at
their size (enforce=False or GPUMGR_ENFORCE=0 to opt out), so that a job that outgrows its
lease gets torch's out-of-memory error in its own job; under `gpumgr run`, GPUMGR_LEASE_BYTES
gives the command the same cap. A job kind (job_kind="sdxl-1024") learns its size from its
past runs: pass None as the size to ask for it.
"""

from . import errors
from ._core import CancelToken, Lease, format_bytes, parse_size
from .errors import (
    DeviceUnavailableError,
    DuplicateJobError,
    GPUCapacityError,
    GPUManagerError,
    JobCancelledError,
    LeaseLostError,
    LeasePreempted,
    QueueTimeoutError,
)
from .legacy import GPUMemoryManager
from .manager import DEFAULT_ESTIMATED_VRAM_MB, GPUManager, ResidentModel, get_gpu_manager

__version__ = "0.1.0"

__all__ = [
    "GPUManager",
    "get_gpu_manager",
    "GPUMemoryManager",
    "Lease",
    "CancelToken",
    "GPUManagerError",
    "GPUCapacityError",
    "QueueTimeoutError",
    "JobCancelledError",
    "DuplicateJobError",
    "DeviceUnavailableError",
    "LeaseLostError",
    "LeasePreempted",
    "ResidentModel",
    "DEFAULT_ESTIMATED_VRAM_MB",
    "format_bytes",
    "parse_size",
    "errors",
]
