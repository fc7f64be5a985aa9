"""GPUMemoryManager: the legacy VRAM gate of the original code, delegating to GPUManager.

The figures are MiB. They describe the largest of the manager's devices and are read when the
object is created: ``VRAM_TOTAL`` is its memory, ``AVAILABLE_VRAM`` what leases may hold on it
(memory_limit x total) and ``SAFETY_MARGIN`` the difference.
"""

from __future__ import annotations

from typing import Optional

from .manager import DEFAULT_ESTIMATED_VRAM_MB, GPUManager, Lease, MiB, get_gpu_manager

__all__ = ["GPUMemoryManager"]


class GPUMemoryManager:
    """The legacy API. ``manager`` defaults to the process-wide get_gpu_manager()."""

    VRAM_TOTAL: int
    SAFETY_MARGIN: int
    AVAILABLE_VRAM: int

    def __init__(self, manager: Optional[GPUManager] = None) -> None:
        self.manager = manager if manager is not None else get_gpu_manager()
        devices = self.manager.get_gpu_stats()["devices"]
        largest = max(devices, key=lambda d: d["total_memory"])
        self.VRAM_TOTAL = largest["total_memory"] // MiB
        self.AVAILABLE_VRAM = largest["capacity"] // MiB
        self.SAFETY_MARGIN = self.VRAM_TOTAL - self.AVAILABLE_VRAM

    def get_available_memory(self) -> int:
        """MiB a new job could lease right now on the best device (0 at the concurrency
        limit)."""
        stats = self.manager.get_gpu_stats()
        if stats["active_jobs"] >= stats["max_concurrent_jobs"]:
            return 0
        return max(d["admissible_memory"] for d in stats["devices"]) // MiB

    def can_process_job(self, estimated_vram: int = DEFAULT_ESTIMATED_VRAM_MB) -> bool:
        """Whether a job of ``estimated_vram`` MiB could start now (GPUManager.can_process_job)."""
        return self.manager.can_process_job(estimated_vram)

    def allocate_job(self, job_id: str, estimated_vram: int = DEFAULT_ESTIMATED_VRAM_MB) -> Lease:
        """Takes the lease now or raises GPUCapacityError; use it as a context manager:
        ``with mm.allocate_job("job-1", 4000) as lease: ...`` releases it on exit."""
        return self.manager.allocate_job(job_id, estimated_vram)
