"""The torch memory cap: while this process holds leases on a device, torch's caching allocator
there is capped at their sum (set_per_process_memory_fraction(sum / total)); 1.0 again when
the last one ends; never set with enforce off; from GPUMGR_LEASE_BYTES in a `gpumgr run`
child. A stand-in `torch` (conftest.FakeCuda, or a fake package on a child's path) records the
calls; no GPU and no real torch are needed.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import gpu_manager
from gpu_manager import GPUManager, _core, _torch
from conftest import FAKE_TORCH_TOTAL, GiB, MiB, gpumgr_binary


@pytest.fixture(autouse=True)
def no_leftover_caps():
    """Each test starts with no capped lease in the process (the registry is process-wide)."""
    gc.collect()
    assert [(d, b) for d, b in _core._cap_devices() if b] == []
    yield
    gc.collect()


def fraction(mib: int, total: int = FAKE_TORCH_TOTAL) -> float:
    return mib * MiB / total


# ---- in-process leases ----

def test_a_lease_caps_its_device_at_its_size(two_gpus, fake_torch):
    with two_gpus.managed_generation("one", 6000) as lease:
        assert lease.capped
        assert fake_torch.fraction_calls == [(lease.device_index, fraction(6000))]
    assert fake_torch.fraction_calls[-1] == (lease.device_index, 1.0)
    assert len(fake_torch.fraction_calls) == 2
    assert fake_torch.premature == []


def test_two_leases_on_one_device_sum_and_restore(two_gpus, fake_torch):
    a = two_gpus.allocate_job("a", 6000)
    with two_gpus.managed_generation("b", 4000) as b:
        assert a.device_index == b.device_index  # best-fit packs them on one device
        d = a.device_index
        assert fake_torch.fractions == {d: fraction(10000)}
    assert fake_torch.fractions == {d: fraction(6000)}
    assert two_gpus.cleanup_after_job("a")
    assert fake_torch.fractions == {d: 1.0}
    assert [f for _, f in fake_torch.fraction_calls] == [
        fraction(6000), fraction(10000), fraction(6000), 1.0]


def test_leases_on_two_devices_are_capped_separately(two_gpus, fake_torch):
    a = two_gpus.allocate_job("a", 19000)
    b = two_gpus.allocate_job("b", 3000)  # no room left on a's device
    assert a.device_index != b.device_index
    assert fake_torch.fractions == {a.device_index: fraction(19000),
                                    b.device_index: fraction(3000)}
    b.release()
    assert fake_torch.fractions == {a.device_index: fraction(19000), b.device_index: 1.0}
    a.release()
    assert fake_torch.fractions == {a.device_index: 1.0, b.device_index: 1.0}


def test_multi_gpu_lease_caps_every_device(two_gpus, fake_torch):
    with two_gpus.allocate_job("wide", 5000, gpus=2) as lease:
        assert sorted(lease.devices) == [0, 1]
        assert fake_torch.fractions == {0: fraction(5000), 1: fraction(5000)}
    assert fake_torch.fractions == {0: 1.0, 1: 1.0}


def test_a_lease_larger_than_torch_sees_is_clamped_to_one(simulate, fake_torch):
    simulate("80GiB")
    m = GPUManager(memory_limit=1.0)
    fake_torch.total = 20 * GiB  # torch's device is smaller than the simulated one
    with m.managed_generation("big", 30 * 1024):
        assert fake_torch.fractions == {0: 1.0}


def test_a_dropped_manager_releases_its_kept_leases(simulate, fake_torch):
    simulate("2x24GiB")
    m = GPUManager()
    lease = m.allocate_job("kept", 6000)
    d = lease.device_index
    del lease  # the manager keeps it
    assert fake_torch.fractions == {d: fraction(6000)}
    del m  # no reference cycle: the manager and its leases go now
    assert fake_torch.fractions == {d: 1.0}
    assert _core._cap_state(d)[0] == 0


def test_enforce_false_sets_nothing(simulate, fake_torch):
    simulate("2x24GiB")
    m = GPUManager(enforce=False)
    assert m.enforce is False
    with m.managed_generation("free", 6000) as lease:
        assert not lease.capped
    m.allocate_job("free2", 6000).release()
    # Per call, enforce=True wins over the manager's False, and the reverse.
    with m.managed_generation("forced", 2000, enforce=True):
        assert list(fake_torch.fractions.values()) == [fraction(2000)]
    capped = GPUManager()
    with capped.managed_generation("off", 2000, enforce=False) as lease:
        assert not lease.capped
    with capped.allocate_job("off2", 2000, enforce=False) as lease:
        assert not lease.capped
    assert [f for _, f in fake_torch.fraction_calls] == [fraction(2000), 1.0]


def test_gpumgr_enforce_0_turns_the_default_off(simulate, fake_torch, monkeypatch):
    simulate("2x24GiB")
    monkeypatch.setenv("GPUMGR_ENFORCE", "0")
    m = GPUManager()
    assert m.enforce is False
    with m.managed_generation("env-off", 6000):
        pass
    assert fake_torch.fraction_calls == []
    monkeypatch.setenv("GPUMGR_ENFORCE", "1")
    assert GPUManager().enforce is True


@pytest.mark.parametrize("value", [1, "yes", 0])
def test_enforce_must_be_a_bool(two_gpus, value):
    with pytest.raises(TypeError, match="enforce must be True, False or None"):
        two_gpus.managed_generation("e", 100, enforce=value)
    with pytest.raises(TypeError, match="enforce must be True, False or None"):
        two_gpus.allocate_job("e", 100, enforce=value)
    with pytest.raises(TypeError, match="enforce"):
        GPUManager(enforce=value)


def test_cpu_leases_cap_nothing(fake_torch, mode):
    m = GPUManager(device="cpu", memory_limit=1.0)
    with m.managed_generation("cpu-job", 100) as lease:
        assert lease.device == "cpu" and not lease.capped
    assert fake_torch.fraction_calls == []


def test_devices_hidden_from_cuda_are_not_capped(fake_nvml, fake_torch, mode, monkeypatch):
    fake_nvml("".join(f"device\nuuid GPU-{i}{i}{i}{i}\nname NVIDIA A10\nmemory_total_mib 24576\n"
                      for i in range(3)))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    m = GPUManager(device="cuda:0")  # torch's cuda:0 is gpumgr's device 2
    with m.managed_generation("mapped", 6000) as lease:
        assert (lease.device_index, lease.device) == (2, "cuda:0")
        assert fake_torch.fractions == {0: fraction(6000)}  # torch's index, not gpumgr's


# ---- CUDA not initialised yet: never initialise it, cap when torch does ----

def test_cap_waits_for_cuda_initialisation_inside_the_block(two_gpus, fake_torch):
    fake_torch.initialized = False
    with two_gpus.managed_generation("late", 6000) as lease:
        assert fake_torch.fraction_calls == [] and len(fake_torch.queued) == 1
        fake_torch.init()  # the job's first CUDA call
        assert fake_torch.fractions == {lease.device_index: fraction(6000)}
    assert fake_torch.fractions == {lease.device_index: 1.0}
    assert fake_torch.premature == []


def test_one_queued_call_for_many_leases_before_init(two_gpus, fake_torch):
    fake_torch.initialized = False
    a = two_gpus.allocate_job("a", 1000)
    b = two_gpus.allocate_job("b", 2000)
    a.release()
    assert len(fake_torch.queued) == 1 and fake_torch.fraction_calls == []
    fake_torch.init()
    assert fake_torch.fractions == {b.device_index: fraction(2000)}
    b.release()
    assert fake_torch.fractions == {b.device_index: 1.0}


def test_lease_ended_before_init_sets_nothing(two_gpus, fake_torch):
    fake_torch.initialized = False
    with two_gpus.managed_generation("gone", 6000):
        pass
    fake_torch.init()
    assert fake_torch.fraction_calls == [] and fake_torch.premature == []


def test_torch_imported_inside_the_block_is_capped(two_gpus, tmp_path, monkeypatch):
    """The import hook: torch not imported when the lease is granted, imported in the block."""
    package = write_fake_torch(tmp_path)
    monkeypatch.syspath_prepend(str(package))
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    try:
        with two_gpus.managed_generation("hooked", 8 * 1024) as lease:
            import torch  # noqa: F401  (the fake package, through the hook)

            assert torch.cuda.record["fractions"] == {}  # no CUDA yet: nothing set
            torch.cuda.init()
            assert torch.cuda.record["fractions"] == {str(lease.device_index): 0.25}
        assert torch.cuda.record["fractions"] == {str(lease.device_index): 1.0}
        assert torch.cuda.record["premature"] == []
        assert not any(isinstance(f, _torch._TorchImportHook) for f in sys.meta_path)
    finally:
        sys.modules.pop("torch", None)


# ---- threads ----

def test_concurrent_leases_from_threads_end_at_the_right_fraction(simulate, fake_torch):
    simulate("24GiB")
    m = GPUManager(max_concurrent_jobs=4, memory_limit=1.0)
    sizes = [1000, 2000, 3000, 4000]
    inside = threading.Barrier(len(sizes) + 1)
    leave = threading.Event()
    errors: list[BaseException] = []

    def job(i: int) -> None:
        try:
            with m.managed_generation(f"t{i}", sizes[i], timeout=10):
                inside.wait(timeout=10)
                leave.wait(timeout=10)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(len(sizes))]
    for t in threads:
        t.start()
    inside.wait(timeout=10)
    assert fake_torch.fractions == {0: fraction(sum(sizes))}
    leave.set()
    for t in threads:
        t.join(timeout=10)
    assert errors == []
    assert fake_torch.fractions == {0: 1.0}


def test_churn_from_threads_leaves_no_cap(simulate, fake_torch):
    simulate("24GiB")
    m = GPUManager(max_concurrent_jobs=6, memory_limit=1.0)
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        try:
            for i in range(60):
                with m.managed_generation(f"w{w}-{i}", 100 + 10 * w, timeout=10):
                    pass
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert _core._cap_state(0)[0] == 0
    assert fake_torch.fractions == {0: 1.0}
    # Never more than the six workers' leases together (100 + 110 + ... + 150 MiB).
    assert all(f == 1.0 or 0 < f <= fraction(750) for _, f in fake_torch.fraction_calls)


# ---- the out-of-memory note ----

def test_oom_in_a_block_names_the_lease_its_size_and_the_peak(two_gpus, fake_torch):
    with pytest.raises(fake_torch.OutOfMemoryError) as err:
        with two_gpus.managed_generation("sdxl-7", 6144) as lease:
            fake_torch.use(lease.device_index, 6000 * MiB)  # peak reserved: 6002 MiB
            raise fake_torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 512 MiB")
    exc = err.value
    assert type(exc) is fake_torch.OutOfMemoryError
    assert str(exc) == "CUDA out of memory. Tried to allocate 512 MiB"  # torch's own message
    assert exc.__notes__ == [
        f"gpu_manager: job 'sdxl-7' ran out of its lease of 6 GiB on cuda:{lease.device_index} "
        "(peak 5.9 GiB reserved by torch): ask for more memory, or use a job_kind to learn "
        "its size"]
    assert two_gpus.get_gpu_stats()["jobs_oom"] == 1


def test_oom_note_shows_the_cap_shared_with_other_leases(two_gpus, fake_torch):
    with two_gpus.allocate_job("other", 4096):
        with pytest.raises(fake_torch.OutOfMemoryError) as err:
            with two_gpus.managed_generation("mine", 2048) as lease:
                d = lease.device_index
                fake_torch.use(d, 1000 * MiB)
                raise fake_torch.OutOfMemoryError("CUDA out of memory")
    assert err.value.__notes__ == [
        f"gpu_manager: job 'mine' ran out of its lease of 2 GiB on cuda:{d} (peak 1002 MiB "
        f"reserved by torch; this process's leases together cap torch at cuda:{d} 6 GiB): "
        "ask for more memory, or use a job_kind to learn its size"]


def test_oom_without_the_cap_says_so(simulate, fake_torch):
    simulate("2x24GiB")
    m = GPUManager(enforce=False)
    with pytest.raises(RuntimeError) as err:
        with m.allocate_job("loose", 1024) as lease:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")
    assert err.value.__notes__ == [
        f"gpu_manager: job 'loose' ran out of memory on cuda:{lease.device_index} while holding "
        "a lease of 1 GiB (peak 0 B reserved by torch; torch was not capped at the lease)"]
    assert m.get_gpu_stats()["jobs_oom"] == 1


def test_other_errors_get_no_note(two_gpus, fake_torch):
    with pytest.raises(ValueError) as err:
        with two_gpus.managed_generation("plain", 100):
            raise ValueError("not memory")
    assert not hasattr(err.value, "__notes__")


# ---- GPUMGR_LEASE_BYTES in a child (the fake torch package on its path) ----

FAKE_TORCH = '''
"""A stand-in torch for gpu_manager's tests: records what torch.cuda is asked."""
import os
import types


class _Cuda:
    class OutOfMemoryError(RuntimeError):
        pass

    def __init__(self):
        self.initialized = os.environ.get("FAKE_TORCH_INITIALIZED") == "1"
        self.count = int(os.environ.get("FAKE_TORCH_DEVICES", "2"))
        self.total = int(os.environ.get("FAKE_TORCH_TOTAL", str(32 * 1024**3)))
        self.queued = []
        self.record = {"fractions": {}, "calls": [], "premature": []}

    def is_available(self):
        return True

    def is_initialized(self):
        return self.initialized

    def device_count(self):
        return self.count

    def _lazy_call(self, fn):
        if self.initialized:
            fn()
        else:
            self.queued.append(fn)

    def init(self):
        if not self.initialized:
            self.initialized = True
            for fn in self.queued:
                fn()
            self.queued = []

    def _check(self, what):
        if not self.initialized:
            self.record["premature"].append(what)
            raise AssertionError(what + " would initialise CUDA")

    def set_per_process_memory_fraction(self, fraction, device):
        self._check("set_per_process_memory_fraction")
        assert isinstance(fraction, float) and 0 <= fraction <= 1, fraction
        self.record["calls"].append([device, fraction])
        self.record["fractions"][str(device)] = fraction

    def get_device_properties(self, index):
        self._check("get_device_properties")
        return types.SimpleNamespace(total_memory=self.total)

    def empty_cache(self):
        pass


cuda = _Cuda()
'''


def write_fake_torch(tmp_path: Path) -> Path:
    root = tmp_path / "fake-torch"
    (root / "torch").mkdir(parents=True, exist_ok=True)
    (root / "torch" / "__init__.py").write_text(FAKE_TORCH)
    return root


def run_child(tmp_path: Path, code: str, env: dict[str, str]) -> dict:
    build_python = Path(gpu_manager.__file__).resolve().parents[1]
    child_env = {k: v for k, v in os.environ.items()
                 if not k.startswith(("GPUMGR_", "CUDA_", "FAKE_TORCH_"))}
    child_env.update(PYTHONPATH=f"{write_fake_torch(tmp_path)}{os.pathsep}{build_python}",
                     GPUMGR_NVML_LIBRARY="/nonexistent/libnvidia-ml.so.1",
                     PYTHONDONTWRITEBYTECODE="1")
    child_env.update(env)
    script = textwrap.dedent(code) + "\nimport json, torch\nprint(json.dumps(torch.cuda.record))\n"
    out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", script],
                         env=child_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


LEASE_ENV = {"GPUMGR_LEASE_BYTES": str(8 * GiB), "CUDA_VISIBLE_DEVICES": "GPU-aaaa,GPU-bbbb",
             "GPUMGR_LEASE_DEVICES": "3,5", "GPUMGR_LEASE_JOB_ID": "run-1"}


@pytest.mark.parametrize("code", [
    # gpu_manager first, torch later (the import hook), CUDA later (the queued call)
    "import gpu_manager\nimport torch\ntorch.cuda.init()",
    # torch first
    "import torch\nimport gpu_manager\ntorch.cuda.init()",
], ids=["gpu_manager-first", "torch-first"])
def test_lease_bytes_cap_the_visible_devices(tmp_path, code):
    record = run_child(tmp_path, code, LEASE_ENV)
    # Two visible devices: torch's cuda:0 and cuda:1, each capped at 8 of 32 GiB.
    assert record["fractions"] == {"0": 0.25, "1": 0.25}
    assert record["premature"] == []


def test_lease_bytes_with_cuda_already_initialised(tmp_path):
    record = run_child(tmp_path, "import torch\nimport gpu_manager",
                       dict(LEASE_ENV, FAKE_TORCH_INITIALIZED="1", FAKE_TORCH_TOTAL=str(16 * GiB)))
    assert record["fractions"] == {"0": 0.5, "1": 0.5}


def test_lease_bytes_never_initialise_cuda(tmp_path):
    record = run_child(tmp_path, "import gpu_manager\nimport torch", LEASE_ENV)
    assert record == {"fractions": {}, "calls": [], "premature": []}


def test_lease_bytes_add_to_the_child_leases(tmp_path):
    code = """
    import gpu_manager, torch
    torch.cuda.init()
    m = gpu_manager.GPUManager(device="cuda:0", simulate="2x24GiB")
    with m.managed_generation("inner", 4096):
        inside = dict(torch.cuda.record["fractions"])
    torch.cuda.record["inside"] = inside
    """
    record = run_child(tmp_path, code, LEASE_ENV)
    assert record["inside"] == {"0": 0.375, "1": 0.25}  # (8 + 4) / 32 on cuda:0
    assert record["fractions"] == {"0": 0.25, "1": 0.25}  # back to the run's lease, not 1.0


def test_lease_bytes_without_visible_devices_use_the_lease_devices(tmp_path):
    env = {k: v for k, v in LEASE_ENV.items() if k != "CUDA_VISIBLE_DEVICES"}
    record = run_child(tmp_path, "import gpu_manager, torch\ntorch.cuda.init()",
                       dict(env, FAKE_TORCH_DEVICES="6"))
    assert record["fractions"] == {"3": 0.25, "5": 0.25}


@pytest.mark.parametrize("value", ["0", "false", "OFF"])
def test_gpumgr_enforce_0_opts_out(tmp_path, value):
    record = run_child(tmp_path, "import gpu_manager, torch\ntorch.cuda.init()",
                       dict(LEASE_ENV, GPUMGR_ENFORCE=value))
    assert record["calls"] == []


def test_bad_lease_bytes_warn_and_cap_nothing(tmp_path):
    code = """
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import gpu_manager, torch
    torch.cuda.init()
    torch.cuda.record["warnings"] = [str(w.message) for w in caught]
    """
    record = run_child(tmp_path, code, dict(LEASE_ENV, GPUMGR_LEASE_BYTES="8GiB"))
    assert record["calls"] == []
    assert record["warnings"] == [
        "GPUMGR_LEASE_BYTES='8GiB' is not a positive number of bytes: torch's memory is not "
        "capped"]


# ---- gpumgr run exports GPUMGR_LEASE_BYTES ----

def test_gpumgr_run_child_is_capped_at_its_lease(tmp_path, fake_nvml, start_serve):
    binary = gpumgr_binary()
    fake_nvml("device\nuuid GPU-1111\nname NVIDIA A10\nmemory_total_mib 24576\n"
              "device\nuuid GPU-2222\nname NVIDIA A10\nmemory_total_mib 24576\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUDA_")}
    socket = start_serve(env=env)
    build_python = Path(gpu_manager.__file__).resolve().parents[1]
    child = ("import os, json, gpu_manager, torch; torch.cuda.init(); "
             "print(json.dumps({'bytes': os.environ['GPUMGR_LEASE_BYTES'], "
             "'visible': os.environ['CUDA_VISIBLE_DEVICES'], "
             "'fractions': torch.cuda.record['fractions']}))")
    run_env = dict(env, PYTHONPATH=f"{write_fake_torch(tmp_path)}{os.pathsep}{build_python}",
                   FAKE_TORCH_TOTAL=str(24 * GiB), FAKE_TORCH_DEVICES="1")
    out = subprocess.run([str(binary), "run", "--socket", str(socket), "--vram", "6GiB",
                          "--", sys.executable, "-c", child],
                         env=run_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["bytes"] == str(6 * GiB)
    assert result["visible"] in ("GPU-1111", "GPU-2222")
    assert result["fractions"] == {"0": 0.25}
    with_opt_out = subprocess.run(
        [str(binary), "run", "--socket", str(socket), "--vram", "6GiB", "--",
         sys.executable, "-c", child], env=dict(run_env, GPUMGR_ENFORCE="0"),
        capture_output=True, text=True, timeout=60)
    assert with_opt_out.returncode == 0, with_opt_out.stderr
    assert json.loads(with_opt_out.stdout.strip().splitlines()[-1])["fractions"] == {}
