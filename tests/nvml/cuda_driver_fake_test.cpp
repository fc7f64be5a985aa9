// The CUDA driver loader against the fake libcuda (tests/fakes/fake_cuda.c): synchronising and
// reading memory only where this process already has an active primary context.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cstdlib>

#include "cuda/cuda_driver.h"

namespace gpumgr::cuda {
namespace {

// The driver loads once per process, so every test points it at the fake before any call.
class CudaFakeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    setenv("GPUMGR_CUDA_LIBRARY", FAKE_CUDA_PATH, 1);
    ASSERT_TRUE(driver_status().ok()) << driver_status().to_string();
    void* handle = dlopen(FAKE_CUDA_PATH, RTLD_NOW | RTLD_NOLOAD);
    ASSERT_NE(handle, nullptr);
    set_active_ = reinterpret_cast<void (*)(int)>(dlsym(handle, "fake_cuda_set_active"));
    counter_ = reinterpret_cast<int (*)(const char*)>(dlsym(handle, "fake_cuda_counter"));
    dlclose(handle);  // the loader keeps its own reference for the life of the process
    ASSERT_NE(set_active_, nullptr);
    ASSERT_NE(counter_, nullptr);
    set_active_(0);
  }
  void (*set_active_)(int) = nullptr;
  int (*counter_)(const char*) = nullptr;
};

TEST_F(CudaFakeTest, InactiveContextIsNeitherCreatedNorSynchronised) {
  const int retains = counter_("retain");
  EXPECT_TRUE(synchronize_device("00000000:3B:00.0").ok());
  EXPECT_EQ(counter_("retain"), retains);
  EXPECT_EQ(counter_("created"), 0);
  auto memory = device_memory("00000000:3B:00.0");
  ASSERT_FALSE(memory.ok());
  EXPECT_EQ(memory.status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(memory.status().message(), "no CUDA context on this device in this process");
  EXPECT_EQ(counter_("created"), 0);
}

TEST_F(CudaFakeTest, ActiveContextIsSynchronisedAndReleased) {
  set_active_(1);
  const int retains = counter_("retain");
  const int releases = counter_("release");
  const int syncs = counter_("sync");
  ASSERT_TRUE(synchronize_device("00000000:3B:00.0").ok());
  EXPECT_EQ(counter_("sync"), syncs + 1);
  EXPECT_EQ(counter_("retain"), retains + 1);
  EXPECT_EQ(counter_("release"), releases + 1);
  EXPECT_EQ(counter_("depth"), 0);
  EXPECT_EQ(counter_("created"), 0);
}

TEST_F(CudaFakeTest, DeviceMemoryInAnActiveContext) {
  set_active_(1);
  auto memory = device_memory("0000:3b:00.0");
  ASSERT_TRUE(memory.ok()) << memory.status().to_string();
  EXPECT_EQ(memory->free_bytes, 1ULL << 30);
  EXPECT_EQ(memory->total_bytes, 16ULL << 30);
  EXPECT_EQ(counter_("depth"), 0);
  EXPECT_EQ(counter_("retain"), counter_("release"));
}

TEST_F(CudaFakeTest, UnknownBusIdIsNotFound) {
  const Status status = synchronize_device("00000000:AF:00.0");
  EXPECT_EQ(status.code(), ErrorCode::kNotFound);
  EXPECT_NE(status.message().find("00000000:AF:00.0"), std::string::npos) << status.message();
}

TEST(CudaBusId, NormalisesNvmlForm) {
  EXPECT_EQ(normalize_pci_bus_id("00000000:3B:00.0"), "0000:3b:00.0");
  EXPECT_EQ(normalize_pci_bus_id("0001:AF:1f.7"), "0001:af:1f.7");
  EXPECT_EQ(normalize_pci_bus_id("not a bus id"), "not a bus id");
}

}  // namespace
}  // namespace gpumgr::cuda
