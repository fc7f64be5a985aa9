// Tests on real NVIDIA hardware (ctest label `gpu`, run by tests/gpu/run.sh). Each skips itself
// with the reason when this machine has no usable NVML or CUDA driver.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "cuda/cuda_driver.h"
#include "gpumgr/backends.h"
#include "nvml/nvml_backend.h"

namespace gpumgr {
namespace {

// The real driver, even where a developer's shell points GPUMGR_NVML_LIBRARY at a fake.
StatusOr<std::shared_ptr<DeviceBackend>> real_backend() {
  unsetenv("GPUMGR_NVML_LIBRARY");
  unsetenv("GPUMGR_CUDA_LIBRARY");
  return make_nvml_backend();
}

TEST(NvmlGpu, DevicesAreSaneAndHealthy) {
  auto backend = real_backend();
  if (!backend.ok()) GTEST_SKIP() << "no NVIDIA GPU: " << backend.status().message();
  auto devices = backend.value()->query();
  ASSERT_TRUE(devices.ok()) << devices.status().to_string();
  ASSERT_FALSE(devices->empty());
  for (std::size_t i = 0; i < devices->size(); ++i) {
    const DeviceInfo& d = (*devices)[i];
    SCOPED_TRACE(d.name);
    EXPECT_EQ(d.index, static_cast<int>(i));
    EXPECT_TRUE(d.healthy) << d.health_reason;
    EXPECT_EQ(d.uuid.rfind("GPU-", 0), 0u) << d.uuid;
    EXPECT_FALSE(d.name.empty());
    EXPECT_FALSE(d.pci_bus_id.empty());
    EXPECT_GT(d.total_bytes, 0u);
    EXPECT_LE(d.used_bytes, d.total_bytes);
    EXPECT_LE(d.free_bytes, d.total_bytes);
    EXPECT_TRUE(d.compute_capability_major.has_value());
  }
  const BackendInfo info = backend.value()->info();
  EXPECT_FALSE(info.driver_version.empty());
  EXPECT_FALSE(info.cuda_driver_version.empty());
}

TEST(NvmlGpu, SynchronisingWithoutAContextCreatesNone) {
  auto backend = real_backend();
  if (!backend.ok()) GTEST_SKIP() << "no NVIDIA GPU: " << backend.status().message();
  if (Status s = cuda::driver_status(); !s.ok()) GTEST_SKIP() << s.message();
  auto devices = backend.value()->query();
  ASSERT_TRUE(devices.ok()) << devices.status().to_string();
  const auto pid = static_cast<std::uint32_t>(getpid());
  for (const DeviceInfo& d : *devices) {
    SCOPED_TRACE(d.pci_bus_id);
    EXPECT_TRUE(cuda::synchronize_device(d.pci_bus_id).ok());
    auto memory = cuda::device_memory(d.pci_bus_id);
    ASSERT_FALSE(memory.ok());
    EXPECT_EQ(memory.status().code(), ErrorCode::kFailedPrecondition);
  }
  // Had either call created a context, this process would now hold device memory.
  auto after = backend.value()->query();
  ASSERT_TRUE(after.ok());
  for (const DeviceInfo& d : *after) {
    if (d.processes_known) {
      EXPECT_EQ(process_used_bytes(d, pid), 0u) << d.pci_bus_id;
    }
  }
}

}  // namespace
}  // namespace gpumgr
