// The CUDA driver loader on a machine without libcuda: every call is kUnavailable and names
// the library it tried.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cstdlib>

#include "cuda/cuda_driver.h"

namespace gpumgr::cuda {
namespace {

TEST(CudaDriverMissing, UnavailableNamesTheLibrary) {
  unsetenv("GPUMGR_CUDA_LIBRARY");
  if (void* real = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL); real != nullptr) {
    dlclose(real);
    GTEST_SKIP() << "this machine has a CUDA driver (libcuda.so.1 loads)";
  }
  const Status status = driver_status();
  EXPECT_EQ(status.code(), ErrorCode::kUnavailable);
  EXPECT_NE(status.message().find("CUDA driver unavailable: libcuda.so.1: cannot open shared "
                                  "object file"),
            std::string::npos)
      << status.message();
  // Every operation reports the same cause, loading only once.
  EXPECT_EQ(synchronize_device("00000000:3B:00.0"), status);
  auto memory = device_memory("00000000:3B:00.0");
  ASSERT_FALSE(memory.ok());
  EXPECT_EQ(memory.status(), status);
}

}  // namespace
}  // namespace gpumgr::cuda
