// open_backend (src/device/backend_factory.cpp) choosing the NVML backend, against the fake.
#include <gtest/gtest.h>

#include "fake_nvml_fixture.h"
#include "gpumgr/backends.h"

namespace gpumgr {
namespace {

using testing::eight_gpu_box;
using testing::kFakeNvml;

using NvmlFactoryTest = testing::FakeNvmlTest;

TEST_F(NvmlFactoryTest, AutoPicksNvmlGpus) {
  use(kFakeNvml, eight_gpu_box());
  auto selection = open_backend("auto");
  ASSERT_TRUE(selection.ok()) << selection.status().to_string();
  ASSERT_NE(selection->backend, nullptr);
  EXPECT_EQ(selection->backend->info().name, "nvml");
  EXPECT_EQ(selection->pinned_device, -1);
  auto devices = selection->backend->query();
  ASSERT_TRUE(devices.ok());
  EXPECT_EQ(devices->size(), 8u);
}

TEST_F(NvmlFactoryTest, CudaOnePinsTheSecondGpu) {
  use(kFakeNvml, eight_gpu_box());
  auto selection = open_backend("cuda:1");
  ASSERT_TRUE(selection.ok()) << selection.status().to_string();
  EXPECT_EQ(selection->backend->info().name, "nvml");
  EXPECT_EQ(selection->pinned_device, 1);
}

TEST_F(NvmlFactoryTest, CudaBeyondTheLastGpuIsNotFound) {
  use(kFakeNvml, eight_gpu_box());
  auto selection = open_backend("cuda:8");
  ASSERT_FALSE(selection.ok());
  EXPECT_EQ(selection.status().code(), ErrorCode::kNotFound);
}

TEST_F(NvmlFactoryTest, WithoutNvmlAutoFallsBackToCpuAndCudaFails) {
  use("/nonexistent/gpumgr-test/libnvidia-ml.so.1", "");
  auto selection = open_backend("auto");
  ASSERT_TRUE(selection.ok()) << selection.status().to_string();
  EXPECT_EQ(selection->backend->info().name, "cpu");
  EXPECT_NE(selection->note.find("/nonexistent/gpumgr-test/libnvidia-ml.so.1"), std::string::npos)
      << selection->note;

  auto cuda = open_backend("cuda:1");
  ASSERT_FALSE(cuda.ok());
  EXPECT_EQ(cuda.status().code(), ErrorCode::kUnavailable);
}

}  // namespace
}  // namespace gpumgr
