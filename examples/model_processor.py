#!/usr/bin/env python3
"""A model processor in the style of a 2D-to-3D service: load the model once, then generate per
request inside managed_generation().

Run it as it is, with simulated GPUs:

    GPUMGR_SIMULATE=2x24GiB PYTHONPATH=build/python /usr/bin/python3 examples/model_processor.py

The fake model takes time and memory like a real one would; with torch installed, the same
code moves a real model with `model.to(lease.device)`. Requests arrive from several client
threads (as in a Flask or FastAPI backend); the manager decides which run now and which wait.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from gpu_manager import GPUManager, get_gpu_manager


class FakeImageTo3DModel:
    """Stands in for a 2D-to-3D network: slow to load, needs VRAM per generation."""

    def __init__(self) -> None:
        time.sleep(0.2)  # loading weights
        self.device = "cpu"

    def to(self, device: str) -> "FakeImageTo3DModel":
        self.device = device
        return self

    def generate(self, image: str, steps: int) -> dict[str, Any]:
        time.sleep(0.01 * steps)
        return {"mesh": f"{image}.glb", "vertices": 1000 * steps, "device": self.device}


class ModelProcessor:
    """Loads the model once and serves requests under the GPU manager."""

    VRAM_PER_STEP_MB = 800

    def __init__(self, manager: GPUManager) -> None:
        self.manager = manager
        self.model = FakeImageTo3DModel()
        self.lock = threading.Lock()  # one model object: moves between devices one at a time

    def process(self, request_id: str, image: str, steps: int = 8) -> dict[str, Any]:
        vram = 2000 + self.VRAM_PER_STEP_MB * steps
        with self.manager.managed_generation(request_id, vram, timeout=30) as lease:
            with self.lock:
                model = self.model.to(lease.device)
            result = model.generate(image, steps)
            result["device"] = lease.device
            result["vram_mb"] = lease.memory_mb
            return result


def main() -> int:
    manager = get_gpu_manager(max_concurrent_jobs=3, memory_limit=0.8)
    processor = ModelProcessor(manager)
    print(f"model loaded; serving on {manager.device} "
          f"({manager.get_gpu_stats()['device_name']})")
    results: dict[str, dict[str, Any]] = {}
    errors: list[str] = []

    def client(n: int) -> None:
        for k in range(3):
            request_id = f"req-{n}-{k}"
            try:
                results[request_id] = processor.process(request_id, f"photo_{n}_{k}.png",
                                                        steps=4 + (n + k) % 8)
            except Exception as e:  # a real service would answer 503 here
                errors.append(f"{request_id}: {e}")

    start = time.monotonic()
    clients = [threading.Thread(target=client, args=(n,)) for n in range(5)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    for request_id in sorted(results):
        r = results[request_id]
        print(f"{request_id}: {r['mesh']} ({r['vertices']} vertices) on {r['device']}, "
              f"{r['vram_mb']} MiB")
    stats = manager.get_gpu_stats()
    memory = manager.get_memory_info()
    print(f"served {len(results)} requests in {time.monotonic() - start:.2f} s, "
          f"{len(errors)} errors")
    print(f"stats: jobs_processed={stats['jobs_processed']} jobs_failed={stats['jobs_failed']} "
          f"peak_active_jobs={stats['peak_active_jobs']} leased_after={memory['leased']}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
