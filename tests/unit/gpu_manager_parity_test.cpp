// Parity with the original Python GPUManager's 35-test suite (issue 2, section 6): each test
// here pins down, with values, the behaviour one of the originals checked, against the
// simulated backend, the CPU fallback over a fake /proc/meminfo, and the fake libnvidia-ml
// (tests/fakes) loaded through GPUMGR_NVML_LIBRARY. Test names follow the originals.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "fake_nvml_fixture.h"
#include "test_util.h"

namespace gpumgr {
namespace {

using testing::capacity_of;
using testing::EnvGuard;
using testing::local_options;
using testing::make_sim_manager;
using testing::request;
using testing::snap;
using testing::wait_until;

constexpr std::uint64_t k24GiB = 24 * kGiB;
// floor(0.8 * 24 GiB) = 20615843020 bytes = 19660.8 MiB.
constexpr std::uint64_t kCapacity24 = 20615843020ULL;

// ---- Initialisation, singleton, device selection ----

TEST(GpuManagerParity, Initialization) {
  ManagerOptions o = local_options();
  o.simulate = "2x24GiB";
  auto m = Manager::create(o);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ((*m)->options().max_concurrent_jobs, 3);
  EXPECT_DOUBLE_EQ((*m)->options().memory_limit, 0.8);
  EXPECT_EQ((*m)->device_string(), "cuda");
  EXPECT_EQ((*m)->selection_note(), "simulated devices 2x24GiB");
  const Snapshot s = snap(**m);
  EXPECT_EQ(s.backend.name, "simulated");
  EXPECT_EQ(s.config.max_concurrent_jobs, 3);
  EXPECT_DOUBLE_EQ(s.config.memory_limit, 0.8);
  ASSERT_EQ(s.devices.size(), 2u);
  EXPECT_EQ(s.stats.jobs_processed(), 0u);
  EXPECT_TRUE(s.leases.empty());
}

TEST(GpuManagerParity, Singleton) {
  // The same options as DefaultManagerTest, so that both pass in one process in any order.
  ManagerOptions o = local_options();
  o.simulate = "2x24GiB";
  auto a = default_manager(o);
  auto b = default_manager();  // later callers need not repeat the options
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
}

TEST(GpuManagerParity, CudaAvailabilityCheck) {
  // uses_gpu() is the original's torch.cuda.is_available() answer for the chosen device.
  auto gpu = make_sim_manager({k24GiB});
  ASSERT_NE(gpu.manager, nullptr);
  EXPECT_TRUE(gpu->uses_gpu());
  ManagerOptions o = local_options();
  o.device = "cpu";
  auto cpu = Manager::create(o);
  ASSERT_TRUE(cpu.ok());
  EXPECT_FALSE((*cpu)->uses_gpu());
}

TEST(GpuManagerParity, DeviceSelectionAuto) {
  EnvGuard sim("GPUMGR_SIMULATE", "24GiB,80GiB");
  ManagerOptions o = local_options();
  auto m = Manager::create(o);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ((*m)->device_string(), "cuda");
  const Snapshot s = snap(**m);
  ASSERT_EQ(s.devices.size(), 2u);
  EXPECT_EQ(s.devices[1].info.total_bytes, 80 * kGiB);
}

TEST(GpuManagerParity, DeviceSelectionCuda) {
  auto sel = parse_device_selector("cuda:3");
  ASSERT_TRUE(sel.ok());
  EXPECT_EQ(sel->kind, DeviceSelector::Kind::kCuda);
  EXPECT_EQ(sel->index, 3);
  auto opened = open_backend("cuda:1", "2x24GiB");
  ASSERT_TRUE(opened.ok());
  EXPECT_EQ(opened->pinned_device, 1);
  auto any = open_backend("cuda", "2x24GiB");
  ASSERT_TRUE(any.ok());
  EXPECT_EQ(any->pinned_device, -1);
  EXPECT_EQ(any->backend->info().name, "simulated");
}

TEST(GpuManagerParity, DeviceSelectionCpu) {
  auto opened = open_backend("cpu", "2x24GiB");
  ASSERT_TRUE(opened.ok());
  EXPECT_EQ(opened->backend->info().name, "cpu");
  EXPECT_EQ(opened->pinned_device, -1);
}

// ---- Device figures ----

TEST(GpuManagerParity, GpuStats) {
  auto m = make_sim_manager({k24GiB, k24GiB});
  ASSERT_NE(m.manager, nullptr);
  ASSERT_TRUE(m.sim->set_utilization(1, 42).ok());
  ASSERT_TRUE(m.sim->set_temperature(1, 71).ok());
  ASSERT_TRUE(m.sim->set_foreign_usage(1, 3 * kGiB).ok());
  // Admission uses the last reading while it is younger than the poll interval; a snapshot
  // reads the backend now.
  (void)snap(*m.manager);
  auto lease = m->try_acquire(request("stats", 2 * kGiB));
  ASSERT_TRUE(lease.ok());
  const Snapshot s = snap(*m.manager);
  const DeviceAccount& d1 = s.devices[1];
  EXPECT_EQ(d1.info.gpu_utilization_percent, 42u);
  EXPECT_EQ(d1.info.temperature_c, 71u);
  EXPECT_EQ(d1.info.used_bytes, 3 * kGiB);
  EXPECT_EQ(d1.info.free_bytes, 21 * kGiB);
  EXPECT_EQ(s.stats.active_jobs, 1);
  // Best fit: device 1 has less admissible memory, so the lease went there.
  EXPECT_EQ(lease->device(), 1);
  EXPECT_EQ(d1.leased_bytes, 2 * kGiB);
}

TEST(GpuManagerParity, MemoryInfo) {
  auto m = make_sim_manager({k24GiB});
  ASSERT_NE(m.manager, nullptr);
  ASSERT_TRUE(m.sim->set_foreign_usage(0, 1536 * kMiB).ok());
  auto lease = m->try_acquire(request("mem", 4 * kGiB));
  ASSERT_TRUE(lease.ok());
  const DeviceAccount d = snap(*m.manager).devices[0];
  EXPECT_EQ(d.info.total_bytes, k24GiB);
  EXPECT_EQ(d.capacity_bytes, kCapacity24);
  EXPECT_EQ(d.leased_bytes, 4 * kGiB);
  EXPECT_EQ(d.foreign_bytes, 1536 * kMiB);
  EXPECT_EQ(d.admissible_bytes, kCapacity24 - 4 * kGiB - 1536 * kMiB);
  EXPECT_EQ(d.active_leases, 1);
}

TEST(GpuManagerParity, UtilizationTracking) {
  auto m = make_sim_manager({k24GiB});
  ASSERT_NE(m.manager, nullptr);
  EXPECT_EQ(snap(*m.manager).devices[0].info.gpu_utilization_percent, 0u);
  ASSERT_TRUE(m.sim->set_utilization(0, 87).ok());
  EXPECT_EQ(snap(*m.manager).devices[0].info.gpu_utilization_percent, 87u);
  EXPECT_EQ(m.sim->set_utilization(0, 101).code(), ErrorCode::kInvalidArgument);
  // The job-level utilisation the original reported: active jobs of the limit.
  auto a = m->try_acquire(request("a", kGiB));
  auto b = m->try_acquire(request("b", kGiB));
  ASSERT_TRUE(a.ok() && b.ok());
  const Snapshot s = snap(*m.manager);
  EXPECT_EQ(s.stats.active_jobs, 2);
  EXPECT_EQ(s.config.max_concurrent_jobs, 3);
}

TEST(GpuManagerParity, MultipleDevices) {
  ManagerOptions o = local_options();
  o.simulate = "24GiB,80GiB,2x16GiB";
  auto m = Manager::create(o);
  ASSERT_TRUE(m.ok());
  const Snapshot s = snap(**m);
  ASSERT_EQ(s.devices.size(), 4u);
  const std::vector<std::uint64_t> totals = {k24GiB, 80 * kGiB, 16 * kGiB, 16 * kGiB};
  for (std::size_t i = 0; i < totals.size(); ++i) {
    EXPECT_EQ(s.devices[i].info.index, static_cast<int>(i));
    EXPECT_EQ(s.devices[i].info.total_bytes, totals[i]);
    EXPECT_EQ(s.devices[i].capacity_bytes, capacity_of(totals[i], 4, 5));
  }
  // 30 GiB fits only on the 80 GiB device.
  auto big = (*m)->try_acquire(request("big", 30 * kGiB));
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(big->device(), 1);
}

TEST(GpuManagerParity, DeviceProperties) {
  auto m = make_sim_manager({k24GiB, 80 * kGiB});
  ASSERT_NE(m.manager, nullptr);
  const Snapshot s = snap(*m.manager);
  EXPECT_EQ(s.devices[0].info.kind, DeviceKind::kSimulated);
  EXPECT_EQ(s.devices[0].info.uuid, "SIM-0");
  EXPECT_EQ(s.devices[1].info.uuid, "SIM-1");
  EXPECT_EQ(s.devices[0].info.name, "Simulated GPU (24 GiB)");
  EXPECT_EQ(s.devices[1].info.name, "Simulated GPU (80 GiB)");
  EXPECT_TRUE(s.devices[0].info.healthy);
  EXPECT_EQ(device_kind_name(s.devices[0].info.kind), "simulated");
}

// ---- Allocation ----

TEST(GpuManagerParity, MemoryAllocation) {
  auto m = make_sim_manager({k24GiB});
  ASSERT_NE(m.manager, nullptr);
  auto a = m->try_acquire(request("a", 6 * kGiB));
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(snap(*m.manager).devices[0].admissible_bytes, kCapacity24 - 6 * kGiB);
  auto b = m->try_acquire(request("b", 10 * kGiB));
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(snap(*m.manager).devices[0].admissible_bytes, kCapacity24 - 16 * kGiB);
  // 3.2 GiB remain (minus the 0.8 of a byte): 4 GiB no longer fits, 3 GiB does.
  EXPECT_EQ(m->try_acquire(request("c", 4 * kGiB)).status().code(), ErrorCode::kResourceExhausted);
  EXPECT_TRUE(m->try_acquire(request("d", 3 * kGiB)).ok());
}

TEST(GpuManagerParity, MaxMemoryTracking) {
  auto m = make_sim_manager({k24GiB});
  ASSERT_NE(m.manager, nullptr);
  {
    auto a = m->try_acquire(request("a", 2 * kGiB));
    auto b = m->try_acquire(request("b", 3 * kGiB));
    ASSERT_TRUE(a.ok() && b.ok());
  }
  auto c = m->try_acquire(request("c", 4 * kGiB));
  ASSERT_TRUE(c.ok());
  const DeviceAccount d = snap(*m.manager).devices[0];
  EXPECT_EQ(d.leased_bytes, 4 * kGiB);
  EXPECT_EQ(d.peak_leased_bytes, 5 * kGiB);  // a + b together, not c
}

TEST(GpuManagerParity, MemoryReserved) {
  // torch's memory_reserved: where the backend cannot list processes (the CPU device here),
  // what this process reports as reserved is its leases' own use, not outside use.
  const std::string path = ::testing::TempDir() + "meminfo_reserved_" + std::to_string(getpid());
  {
    std::ofstream out(path);
    out << "MemTotal:       16000000 kB\nMemFree:         1000000 kB\n"
           "MemAvailable:   12000000 kB\n";
  }
  auto m = Manager::create(local_options(), make_cpu_backend(path));
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  const std::uint64_t used = 4000000ULL * 1024;
  EXPECT_EQ(snap(**m).devices[0].foreign_bytes, used);
  auto lease = (*m)->try_acquire(request("torch", kGiB));
  ASSERT_TRUE(lease.ok()) << lease.status().to_string();
  (*m)->set_framework_memory_provider([](int) -> std::optional<FrameworkMemory> {
    return FrameworkMemory{512 * kMiB, 768 * kMiB, 600 * kMiB};
  });
  EXPECT_EQ((*m)->framework_memory(0)->reserved_bytes, 768 * kMiB);
  EXPECT_EQ(snap(**m).devices[0].foreign_bytes, used - 768 * kMiB);
  ASSERT_TRUE(lease->release().ok());
  // Without a lease, this process's memory is outside use again.
  EXPECT_EQ(snap(**m).devices[0].foreign_bytes, used);
  std::remove(path.c_str());
}

TEST(GpuManagerParity, CanProcessJob) {
  auto m = make_sim_manager({k24GiB});
  ASSERT_NE(m.manager, nullptr);
  EXPECT_TRUE(m->can_admit(kCapacity24).value());
  EXPECT_FALSE(m->can_admit(kCapacity24 + 1).value());  // never fits: false, not an error
  auto a = m->try_acquire(request("a", 10 * kGiB));
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(m->can_admit(kCapacity24 - 10 * kGiB).value());
  EXPECT_FALSE(m->can_admit(kCapacity24 - 10 * kGiB + 1).value());
  // can_admit reserves nothing.
  EXPECT_EQ(snap(*m.manager).devices[0].leased_bytes, 10 * kGiB);
}

TEST(GpuManagerParity, AllocateJob) {
  auto m = make_sim_manager({k24GiB, k24GiB});
  ASSERT_NE(m.manager, nullptr);
  auto lease = m->try_acquire(request("gen-3d-17", 6000 * kMiB));
  ASSERT_TRUE(lease.ok());
  EXPECT_EQ(lease->job_id(), "gen-3d-17");
  EXPECT_EQ(lease->bytes(), 6000 * kMiB);
  EXPECT_GE(lease->device(), 0);
  EXPECT_LT(lease->device(), 2);
  EXPECT_EQ(lease->info().devices.size(), 1u);
  const Snapshot s = snap(*m.manager);
  ASSERT_EQ(s.leases.size(), 1u);
  EXPECT_EQ(s.leases[0].job_id, "gen-3d-17");
  EXPECT_EQ(s.devices[static_cast<std::size_t>(lease->device())].leased_bytes, 6000 * kMiB);
}

TEST(GpuManagerParity, CleanupAfterJob) {
  auto m = make_sim_manager({k24GiB, k24GiB});
  ASSERT_NE(m.manager, nullptr);
  std::vector<int> cleaned;
  m->set_cleanup_hook([&](int d) { cleaned.push_back(d); });
  ASSERT_TRUE(m.sim->set_foreign_usage(0, 5 * kGiB).ok());
  (void)snap(*m.manager);  // read the new usage now, not at the next poll
  auto lease = m->try_acquire(request("job", kGiB));
  ASSERT_TRUE(lease.ok());
  ASSERT_EQ(lease->device(), 0);  // best fit: the fuller device
  ASSERT_TRUE(m->release("job").ok());
  EXPECT_EQ(cleaned, std::vector<int>{0});
  const Snapshot s = snap(*m.manager);
  EXPECT_TRUE(s.leases.empty());
  EXPECT_EQ(s.stats.jobs_succeeded, 1u);
}

TEST(GpuManagerParity, MemoryCleanup) {
  // The original's cleanup_memory(): the cleanup hook on every device this manager used.
  auto m = make_sim_manager({k24GiB, k24GiB, k24GiB});
  ASSERT_NE(m.manager, nullptr);
  std::vector<int> cleaned;
  m->set_cleanup_hook([&](int d) { cleaned.push_back(d); });
  LeaseRequest on0 = request("on0", kGiB);
  on0.device = 0;
  LeaseRequest on2 = request("on2", kGiB);
  on2.device = 2;
  auto a = m->try_acquire(on0);
  auto b = m->try_acquire(on2);
  ASSERT_TRUE(a.ok() && b.ok());
  m->run_cleanup();
  std::sort(cleaned.begin(), cleaned.end());
  EXPECT_EQ(cleaned, (std::vector<int>{0, 2}));
}

TEST(GpuManagerParity, ConcurrentJobLimit) {
  auto m = make_sim_manager({k24GiB, k24GiB});
  ASSERT_NE(m.manager, nullptr);
  std::vector<Lease> held;
  for (int i = 0; i < 3; ++i) {
    auto lease = m->try_acquire(request("job" + std::to_string(i), kGiB));
    ASSERT_TRUE(lease.ok()) << i;
    held.push_back(std::move(lease).value());
  }
  EXPECT_FALSE(m->can_admit(kGiB).value());
  auto fourth = m->try_acquire(request("job3", kGiB));
  ASSERT_FALSE(fourth.ok());
  EXPECT_EQ(fourth.status().code(), ErrorCode::kResourceExhausted);
  EXPECT_NE(fourth.status().message().find("3 of 3"), std::string::npos)
      << fourth.status().message();
  held.pop_back();
  EXPECT_TRUE(m->can_admit(kGiB).value());
  EXPECT_TRUE(m->try_acquire(request("job3", kGiB)).ok());
}

TEST(GpuManagerParity, CanAllocateVariousSizes) {
  // On 24 GiB (capacity 19660.8 MiB) every size fits; on 8 GiB (capacity 6553.6 MiB) only
  // the two smaller ones and 5000 MiB do.
  auto big = make_sim_manager({k24GiB});
  auto small = make_sim_manager({8 * kGiB});
  ASSERT_NE(big.manager, nullptr);
  ASSERT_NE(small.manager, nullptr);
  const std::map<std::uint64_t, bool> fits_small = {
      {100, true}, {1000, true}, {5000, true}, {10000, false}};
  for (const auto& [mib, small_fits] : fits_small) {
    EXPECT_TRUE(big->can_admit(mib * kMiB).value()) << mib;
    EXPECT_EQ(small->can_admit(mib * kMiB).value(), small_fits) << mib;
    auto lease = big->try_acquire(request("size-" + std::to_string(mib), mib * kMiB));
    ASSERT_TRUE(lease.ok()) << mib;
    EXPECT_EQ(lease->bytes(), mib * kMiB);
  }
}

TEST(GpuManagerParity, ManagedGenerationContext) {
  // The original's `with managed_generation(...)`: an RAII scope. The lease is held inside
  // the scope, released on leaving it (also by an exception), and a failure inside the scope
  // counts as a failed job.
  auto m = make_sim_manager({k24GiB});
  ASSERT_NE(m.manager, nullptr);
  std::vector<int> cleaned;
  m->set_cleanup_hook([&](int d) { cleaned.push_back(d); });
  {
    Lease scope = std::move(m->try_acquire(request("gen-ok", 8 * kGiB))).value();
    EXPECT_EQ(snap(*m.manager).devices[0].leased_bytes, 8 * kGiB);
  }
  EXPECT_EQ(snap(*m.manager).devices[0].leased_bytes, 0u);
  try {
    Lease scope = std::move(m->try_acquire(request("gen-fail", 8 * kGiB))).value();
    try {
      throw std::runtime_error("CUDA out of memory");
    } catch (...) {
      scope.mark_failed();
      throw;
    }
  } catch (const std::runtime_error&) {
  }
  const Snapshot s = snap(*m.manager);
  EXPECT_EQ(s.devices[0].leased_bytes, 0u);
  EXPECT_EQ(s.stats.jobs_succeeded, 1u);
  EXPECT_EQ(s.stats.jobs_failed, 1u);
  EXPECT_EQ(cleaned, (std::vector<int>{0, 0}));
}

TEST(GpuManagerParity, MemoryLimitEnforcement) {
  ManagerOptions o = local_options();
  o.simulate = "2x24GiB";
  auto m = Manager::create(o);
  ASSERT_TRUE(m.ok());
  EXPECT_TRUE((*m)->can_admit(19660 * kMiB).value());
  EXPECT_FALSE((*m)->can_admit(19661 * kMiB).value());
  auto fits = (*m)->try_acquire(request("fits", 19660 * kMiB));
  EXPECT_TRUE(fits.ok()) << fits.status().to_string();
  auto never = (*m)->try_acquire(request("never", 19661 * kMiB));
  ASSERT_FALSE(never.ok());
  EXPECT_EQ(never.status().code(), ErrorCode::kNeverFits);
  // With a limit of 0.5, half a device: 12288 MiB fits, 12289 MiB never does.
  o.memory_limit = 0.5;
  auto half = Manager::create(o);
  ASSERT_TRUE(half.ok());
  EXPECT_TRUE((*half)->can_admit(12288 * kMiB).value());
  EXPECT_EQ((*half)->try_acquire(request("x", 12289 * kMiB)).status().code(),
            ErrorCode::kNeverFits);
}

TEST(GpuManagerParity, CacheInfo) {
  auto m = make_sim_manager({k24GiB, k24GiB});
  ASSERT_NE(m.manager, nullptr);
  std::map<int, FrameworkMemory> torch = {{0, {kGiB, 2 * kGiB, 3 * kGiB / 2}},
                                          {1, {0, 256 * kMiB, 0}}};
  m->set_framework_memory_provider([&](int d) -> std::optional<FrameworkMemory> {
    auto it = torch.find(d);
    if (it == torch.end()) return std::nullopt;
    return it->second;
  });
  EXPECT_EQ(m->framework_memory(0)->allocated_bytes, kGiB);
  EXPECT_EQ(m->framework_memory(0)->reserved_bytes, 2 * kGiB);
  EXPECT_EQ(m->framework_memory(0)->peak_allocated_bytes, 3 * kGiB / 2);
  EXPECT_EQ(m->framework_memory(1)->reserved_bytes, 256 * kMiB);
  EXPECT_FALSE(m->framework_memory(2).has_value());
}

TEST(GpuManagerParity, DeviceSynchronization) {
  auto m = make_sim_manager({k24GiB});
  ASSERT_NE(m.manager, nullptr);
  EXPECT_TRUE(m->synchronize(0).ok());
  EXPECT_EQ(m->synchronize(1).code(), ErrorCode::kNotFound);
}

// ---- The CPU fallback ----

TEST(GpuManagerParity, ErrorHandlingWithNoGpu) {
  EnvGuard no_sim("GPUMGR_SIMULATE", std::nullopt);
  EnvGuard no_nvml("GPUMGR_NVML_LIBRARY", "/nonexistent/gpumgr-unit/libnvidia-ml.so.1");
  ManagerOptions o = local_options();
  o.device = "cuda";
  auto cuda = Manager::create(o);
  ASSERT_FALSE(cuda.ok());
  EXPECT_EQ(cuda.status().code(), ErrorCode::kUnavailable);
  EXPECT_NE(cuda.status().message().find("/nonexistent/gpumgr-unit/libnvidia-ml.so.1"),
            std::string::npos)
      << cuda.status().message();
  o.device = "cuda:0";
  EXPECT_EQ(Manager::create(o).status().code(), ErrorCode::kUnavailable);
}

TEST(GpuManagerParity, FallbackToCpu) {
  EnvGuard no_sim("GPUMGR_SIMULATE", std::nullopt);
  EnvGuard no_nvml("GPUMGR_NVML_LIBRARY", "/nonexistent/gpumgr-unit/libnvidia-ml.so.1");
  auto m = Manager::create(local_options());  // "auto"
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ((*m)->device_string(), "cpu");
  EXPECT_FALSE((*m)->uses_gpu());
  EXPECT_NE((*m)->selection_note().find("using the CPU"), std::string::npos)
      << (*m)->selection_note();
  EXPECT_EQ(snap(**m).backend.name, "cpu");
}

TEST(GpuManagerParity, FallbackToCpuReadsMeminfoExactly) {
  const std::string path = ::testing::TempDir() + "meminfo_" + std::to_string(getpid());
  {
    std::ofstream out(path);
    out << "MemTotal:       32780540 kB\n"
           "MemFree:         1234567 kB\n"
           "MemAvailable:   20123456 kB\n"
           "Buffers:          345678 kB\n";
  }
  auto backend = make_cpu_backend(path);
  EXPECT_EQ(backend->info().name, "cpu");
  auto devices = backend->query();
  ASSERT_TRUE(devices.ok()) << devices.status().to_string();
  ASSERT_EQ(devices->size(), 1u);
  const DeviceInfo& d = (*devices)[0];
  EXPECT_EQ(d.kind, DeviceKind::kCpu);
  EXPECT_EQ(d.uuid, "CPU");
  EXPECT_EQ(d.total_bytes, 32780540ULL * 1024);
  EXPECT_EQ(d.free_bytes, 20123456ULL * 1024);  // MemAvailable, not MemFree
  EXPECT_EQ(d.used_bytes, (32780540ULL - 20123456ULL) * 1024);
  EXPECT_FALSE(d.processes_known);

  auto m = Manager::create(local_options(), backend);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)->device_string(), "cpu");
  const DeviceAccount a = snap(**m).devices[0];
  EXPECT_EQ(a.capacity_bytes, capacity_of(32780540ULL * 1024, 4, 5));
  EXPECT_EQ(a.foreign_bytes, d.used_bytes);
  EXPECT_EQ(a.admissible_bytes, a.capacity_bytes - d.used_bytes);

  {
    std::ofstream out(path, std::ios::trunc);
    out << "MemTotal:       32780540 kB\n";  // no MemAvailable
  }
  auto broken = backend->query();
  ASSERT_FALSE(broken.ok());
  EXPECT_EQ(broken.status().code(), ErrorCode::kUnavailable);
  EXPECT_NE(broken.status().message().find("MemAvailable"), std::string::npos);
  std::remove(path.c_str());
  EXPECT_EQ(make_cpu_backend(path)->query().status().code(), ErrorCode::kUnavailable);
}

// ---- Through the fake libnvidia-ml ----

using FakeNvmlParity = testing::FakeNvmlTest;

TEST_F(FakeNvmlParity, DeviceSelectionAutoFindsTheEightGpus) {
  use(testing::kFakeNvml, testing::eight_gpu_box());
  auto m = Manager::create(local_options());
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ((*m)->device_string(), "cuda");
  EXPECT_TRUE((*m)->uses_gpu());
  const Snapshot s = snap(**m);
  EXPECT_EQ(s.backend.name, "nvml");
  EXPECT_EQ(s.backend.driver_version, "550.54.15");
  ASSERT_EQ(s.devices.size(), 8u);
  EXPECT_EQ(s.devices[0].info.total_bytes, 81559 * kMiB);
  EXPECT_EQ(s.devices[7].info.total_bytes, 40960 * kMiB);
  EXPECT_EQ(s.devices[0].capacity_bytes, capacity_of(81559 * kMiB, 4, 5));
}

TEST_F(FakeNvmlParity, DeviceSelectionCudaOnePinsLeasesToTheSecondGpu) {
  use(testing::kFakeNvml, testing::eight_gpu_box());
  ManagerOptions o = local_options();
  o.device = "cuda:1";
  auto m = Manager::create(o);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ((*m)->device_string(), "cuda:1");
  auto lease = (*m)->try_acquire(request("pinned", 10 * kGiB));
  ASSERT_TRUE(lease.ok()) << lease.status().to_string();
  EXPECT_EQ(lease->device(), 1);
  EXPECT_EQ(snap(**m).devices[1].leased_bytes, 10 * kGiB);
  o.device = "cuda:8";
  EXPECT_EQ(Manager::create(o).status().code(), ErrorCode::kNotFound);
}

TEST_F(FakeNvmlParity, GpuNameDetection) {
  use(testing::kFakeNvml, testing::eight_gpu_box());
  auto m = Manager::create(local_options());
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  const Snapshot s = snap(**m);
  EXPECT_EQ(s.devices[0].info.name, "NVIDIA H100 80GB HBM3");
  EXPECT_EQ(s.devices[4].info.name, "NVIDIA A100-SXM4-40GB");
  EXPECT_EQ(s.devices[0].info.pci_bus_id, "00000000:18:00.0");
  EXPECT_EQ(s.devices[0].info.compute_capability_major, 9);
  EXPECT_EQ(s.devices[0].info.kind, DeviceKind::kGpu);
}

TEST_F(FakeNvmlParity, ForeignProcessOnARealGpuReducesAdmissible) {
  // An outside process (pid 4242, no lease) uses 10 GiB on GPU 0: admissible there drops by
  // exactly 10 GiB.
  std::string box =
      "driver_version 550.54.15\ndevice\nuuid GPU-1\nname NVIDIA L4\n"
      "bus_id 00000000:01:00.0\nmemory_total_mib 24576\nmemory_used_mib 10240\n"
      "process 4242 10240\n";
  use(testing::kFakeNvml, box);
  auto m = Manager::create(local_options());
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  const DeviceAccount d = snap(**m).devices[0];
  EXPECT_EQ(d.capacity_bytes, kCapacity24);
  EXPECT_EQ(d.foreign_bytes, 10737418240u);
  EXPECT_EQ(d.admissible_bytes, kCapacity24 - 10737418240u);
}

// ---- Integration ----

TEST(GpuManagerIntegration, WithBatchProcessor) {
  // A batch of 12 items of 4 GiB, processed 3 at a time through blocking acquires: every
  // item runs, never more than 3 at once, and the counters add up.
  auto m = make_sim_manager({k24GiB}, local_options(3, 0.8));
  ASSERT_NE(m.manager, nullptr);
  std::atomic<int> running{0};
  std::atomic<int> max_running{0};
  std::atomic<int> done{0};
  testing::JoiningThreads workers;
  for (int w = 0; w < 4; ++w) {
    workers.spawn([&, w] {
      for (int i = w; i < 12; i += 4) {
        auto lease = m->acquire(request("item-" + std::to_string(i), 4 * kGiB),
                                WaitOptions::for_seconds(20));
        if (!lease.ok()) continue;
        const int now = ++running;
        int prev = max_running.load();
        while (now > prev && !max_running.compare_exchange_weak(prev, now)) {
        }
        std::this_thread::yield();
        --running;
        ++done;
      }
    });
  }
  workers.join();
  EXPECT_EQ(done.load(), 12);
  EXPECT_LE(max_running.load(), 3);
  const Snapshot s = snap(*m.manager);
  EXPECT_EQ(s.stats.jobs_succeeded, 12u);
  EXPECT_EQ(s.stats.wait_seconds.count, 12u);
  EXPECT_LE(s.devices[0].peak_leased_bytes, 12 * kGiB);
  EXPECT_EQ(s.devices[0].leased_bytes, 0u);
}

TEST(GpuManagerIntegration, WithModelProcessor) {
  // A model that needs 14 GiB to load plus 2 GiB per request: the model's lease stays held
  // while requests come and go; a second 14 GiB model only fits on the other device.
  auto m = make_sim_manager({k24GiB, k24GiB});
  ASSERT_NE(m.manager, nullptr);
  auto model = m->try_acquire(request("model-weights", 14 * kGiB));
  ASSERT_TRUE(model.ok());
  const int model_device = model->device();
  for (int i = 0; i < 5; ++i) {
    LeaseRequest r = request("infer-" + std::to_string(i), 2 * kGiB);
    r.device = model_device;
    auto lease = m->try_acquire(r);
    ASSERT_TRUE(lease.ok()) << lease.status().to_string();
    EXPECT_EQ(snap(*m.manager).devices[static_cast<std::size_t>(model_device)].leased_bytes,
              16 * kGiB);
  }
  auto second = m->try_acquire(request("model-2", 14 * kGiB));
  ASSERT_TRUE(second.ok());
  EXPECT_NE(second->device(), model_device);
  EXPECT_EQ(snap(*m.manager).stats.jobs_succeeded, 5u);
}

TEST(GpuManagerIntegration, MemoryTrackingDuringOperation) {
  auto m = make_sim_manager({k24GiB});
  ASSERT_NE(m.manager, nullptr);
  std::vector<std::uint64_t> leased_seen;
  {
    auto stage1 = m->try_acquire(request("load", 3 * kGiB));
    ASSERT_TRUE(stage1.ok());
    leased_seen.push_back(snap(*m.manager).devices[0].leased_bytes);
    auto stage2 = m->try_acquire(request("denoise", 7 * kGiB));
    ASSERT_TRUE(stage2.ok());
    leased_seen.push_back(snap(*m.manager).devices[0].leased_bytes);
    ASSERT_TRUE(stage1->release().ok());
    leased_seen.push_back(snap(*m.manager).devices[0].leased_bytes);
  }
  leased_seen.push_back(snap(*m.manager).devices[0].leased_bytes);
  EXPECT_EQ(leased_seen, (std::vector<std::uint64_t>{3 * kGiB, 10 * kGiB, 7 * kGiB, 0}));
  EXPECT_EQ(snap(*m.manager).devices[0].peak_leased_bytes, 10 * kGiB);
}

TEST(GpuManagerIntegration, MultiJobScenario) {
  // Two devices, limit 3 jobs. A device's 19.2 GiB capacity holds one 10 GiB job, so the
  // first two go to different devices and the third is refused for memory (not for the job
  // limit); it runs once one ends, on the device that was freed.
  auto m = make_sim_manager({k24GiB, k24GiB});
  ASSERT_NE(m.manager, nullptr);
  auto a = m->try_acquire(request("a", 10 * kGiB));
  auto b = m->try_acquire(request("b", 10 * kGiB));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(a->device(), b->device());
  auto c = m->try_acquire(request("c", 10 * kGiB));
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), ErrorCode::kResourceExhausted);
  EXPECT_NE(c.status().message().find("does not fit now"), std::string::npos);
  // A small job still fits beside them (backfill by memory, up to the job limit).
  auto small = m->try_acquire(request("small", 9 * kGiB));
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(m->try_acquire(request("d", kGiB)).status().code(), ErrorCode::kResourceExhausted);
  const int freed = a->device();
  ASSERT_TRUE(a->release().ok());
  ASSERT_TRUE(small->release().ok());
  auto c2 = m->try_acquire(request("c", 10 * kGiB));
  ASSERT_TRUE(c2.ok());
  EXPECT_EQ(c2->device(), freed);
  const Snapshot s = snap(*m.manager);
  EXPECT_EQ(s.stats.jobs_succeeded, 2u);
  EXPECT_EQ(s.stats.jobs_rejected, 2u);
  EXPECT_EQ(s.stats.active_jobs, 2);
}

TEST(GpuManagerIntegration, ResourceExhaustion) {
  // Fill both devices with 9 GiB leases (two per device fit in 19.2 GiB), then nothing more
  // fits; blocking acquires time out cleanly; freeing one lets exactly one more in.
  auto m = make_sim_manager({k24GiB, k24GiB}, local_options(10, 0.8));
  ASSERT_NE(m.manager, nullptr);
  std::vector<Lease> held;
  for (int i = 0; i < 4; ++i) {
    auto lease = m->try_acquire(request("fill-" + std::to_string(i), 9 * kGiB));
    ASSERT_TRUE(lease.ok()) << i;
    held.push_back(std::move(lease).value());
  }
  EXPECT_FALSE(m->can_admit(9 * kGiB).value());
  EXPECT_TRUE(m->can_admit(kGiB).value());  // 1.2 GiB left on each
  EXPECT_EQ(m->try_acquire(request("more", 9 * kGiB)).status().code(),
            ErrorCode::kResourceExhausted);
  auto waited = m->acquire(request("more", 9 * kGiB), WaitOptions::for_seconds(0.05));
  EXPECT_EQ(waited.status().code(), ErrorCode::kTimedOut);
  EXPECT_TRUE(snap(*m.manager).queue.empty());
  held.erase(held.begin());
  EXPECT_TRUE(m->try_acquire(request("more", 9 * kGiB)).ok());
  const Snapshot s = snap(*m.manager);
  EXPECT_EQ(s.stats.jobs_timed_out, 1u);
  EXPECT_EQ(s.stats.jobs_rejected, 1u);
}

}  // namespace
}  // namespace gpumgr
