"""torch integration: the device string, CUDA device numbering, and the CPU fallback.

The fake-torch tests always run (a stand-in module in sys.modules). The real-torch tests need
torch (Debian's python3-torch is CPU-only) and skip with a reason where it is missing.
"""

from __future__ import annotations

import sys

import pytest

import gpu_manager
from gpu_manager import GPUManager, _torch


def test_cleanup_hook_runs_on_the_leased_device(two_gpus, fake_torch):
    with two_gpus.allocate_job("first", 19000) as a:
        with two_gpus.managed_generation("second", 19000) as b:
            assert {a.device_index, b.device_index} == {0, 1}
            fake_torch.calls.clear()
        assert fake_torch.calls == [("empty_cache", b.device_index)]
        fake_torch.calls.clear()
    assert fake_torch.calls == [("empty_cache", a.device_index)]


def test_torch_imported_after_the_manager_is_picked_up(two_gpus, monkeypatch):
    from conftest import FakeCuda
    import types

    with two_gpus.managed_generation("before", 100):
        pass  # no torch yet: nothing to clean, nothing fails
    cuda = FakeCuda()
    module = types.ModuleType("torch")
    module.cuda = cuda
    monkeypatch.setitem(sys.modules, "torch", module)
    with two_gpus.managed_generation("after", 100) as lease:
        pass
    assert cuda.calls == [("empty_cache", lease.device_index)]


def test_cleanup_skips_devices_torch_does_not_have(simulate, fake_torch):
    simulate("4x24GiB")
    m = GPUManager(device="cuda:3")  # the fake torch has two devices
    with m.managed_generation("far", 100):
        pass
    assert fake_torch.calls == []


def test_failing_cleanup_does_not_fail_the_release(two_gpus, fake_torch, monkeypatch):
    def broken():
        raise RuntimeError("driver gone")

    monkeypatch.setattr(fake_torch, "empty_cache", broken)
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    with two_gpus.managed_generation("j", 100) as lease:
        pass
    assert [str(r.exc_value) for r in reported] == ["driver gone"]
    assert not lease.held
    assert two_gpus.get_gpu_stats()["jobs_succeeded"] == 1


def test_old_torch_oom_runtime_error_is_recognised(two_gpus, fake_torch):
    with pytest.raises(RuntimeError):
        with two_gpus.managed_generation("old-oom", 100):
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")
    assert two_gpus.get_gpu_stats()["jobs_oom"] == 1


def test_allocate_job_block_counts_oom(two_gpus, fake_torch):
    with pytest.raises(fake_torch.OutOfMemoryError):
        with two_gpus.allocate_job("a", 100):
            raise fake_torch.OutOfMemoryError("CUDA out of memory")
    stats = two_gpus.get_gpu_stats()
    assert (stats["jobs_oom"], stats["jobs_failed"], stats["active_jobs"]) == (1, 1, 0)


# ---- device numbering ----

DEVICES = [{"index": i, "uuid": f"GPU-{i}{i}{i}{i}-aaaa"} for i in range(4)]


@pytest.mark.parametrize("visible,expected", [
    (None, [0, 1, 2, 3]),
    ("2,3", [-1, -1, 0, 1]),
    ("3,1", [-1, 1, -1, 0]),
    ("GPU-2222,0", [1, -1, 0, -1]),
    ("1,foo,2", [-1, 0, -1, -1]),  # CUDA stops at the first invalid entry
    ("", [-1, -1, -1, -1]),
    ("MIG-abc", [-1, -1, -1, -1]),
])
def test_torch_index_map(visible, expected):
    env = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert _torch.torch_index_map(DEVICES, env) == expected


def test_device_order_is_set_at_import():
    import os

    assert os.environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID" or gpu_manager.manager._order_left
    env = {}
    assert _torch.set_device_order(env) is None and env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    env = {"CUDA_DEVICE_ORDER": "FASTEST_FIRST"}
    assert _torch.set_device_order(env) == "FASTEST_FIRST"


def test_cuda_visible_devices_maps_real_gpus(fake_nvml, mode, monkeypatch):
    fake_nvml("".join(f"device\nuuid GPU-{i}{i}{i}{i}\nname NVIDIA A10\nmemory_total_mib 24576\n"
                      for i in range(3)))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    # torch's cuda:0 is gpumgr's device 2: the manager pins that one.
    m = GPUManager(device="cuda:0")
    assert m.device == "cuda:0"
    with m.managed_generation("v", 100) as lease:
        assert (lease.device_index, lease.device) == (2, "cuda:0")
    m1 = GPUManager(device="cuda:1")
    with m1.managed_generation("v1", 100) as lease:
        assert (lease.device_index, lease.device) == (0, "cuda:1")
    with pytest.raises(ValueError, match="not visible"):
        GPUManager(device="cuda:2")
    with pytest.warns(RuntimeWarning, match="CUDA_VISIBLE_DEVICES"):
        GPUManager(device="cuda")


# ---- real torch ----

def _real_torch():
    if "torch" in sys.modules and not hasattr(sys.modules["torch"], "device"):
        pytest.skip("a fake torch is loaded")
    return pytest.importorskip("torch", reason="torch is not installed (apt install "
                               "python3-torch to run the torch tests)")


def test_device_string_works_with_torch_device(two_gpus):
    torch = _real_torch()
    with two_gpus.managed_generation("real", 100) as lease:
        device = torch.device(lease.device)
        assert (device.type, device.index) == ("cuda", lease.device_index)
    assert torch.device(two_gpus.device).type == "cuda"
    assert torch.device(GPUManager(device="cuda:1").device).index == 1


def test_cpu_fallback_with_torch_present(mode):
    torch = _real_torch()
    m = GPUManager(memory_limit=1.0)  # no GPU on this machine as far as gpumgr is told
    assert m.device == "cpu"
    with m.managed_generation("cpu-tensor", 16) as lease:
        x = torch.ones(4, device=torch.device(lease.device))
        assert x.device.type == "cpu" and float(x.sum()) == 4.0
    info = m.get_memory_info()
    assert info["source"] == "none" and info["allocated"] == 0
    m.cleanup_after_job()  # empty_cache without CUDA is a no-op, not an error
    if not torch.cuda.is_available():
        assert not _torch.empty_cache("cuda:0")


def test_cap_with_real_torch_initialises_no_cuda(two_gpus):
    """Debian's python3-torch is CPU-only: a lease must neither fail nor initialise CUDA."""
    torch = _real_torch()
    with two_gpus.managed_generation("real-cap", 1000) as lease:
        assert lease.capped
        assert not torch.cuda.is_initialized()
        x = torch.ones(4)  # CPU work inside the block is unaffected
        assert float(x.sum()) == 4.0
    assert not torch.cuda.is_initialized()
    if not torch.cuda.is_available():
        assert _torch.applied_fractions() == {}
