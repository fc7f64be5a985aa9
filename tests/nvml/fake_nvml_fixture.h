// Test fixture for the NVML backend against the fake libnvidia-ml (tests/fakes/fake_nvml.c):
// writes a scenario file, points GPUMGR_NVML_LIBRARY and GPUMGR_FAKE_NVML_SCENARIO at the fake
// and the file, and reaches the fake's exported test hooks with dlopen(RTLD_NOLOAD) + dlsym.
// Used from the gtest main thread only (it sets process environment variables).
#pragma once

#include <dlfcn.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

namespace gpumgr::testing {

inline constexpr const char* kFakeNvml = FAKE_NVML_PATH;
inline constexpr const char* kFakeNvmlOld = FAKE_NVML_OLD_PATH;
inline constexpr const char* kFakeNvmlNoMemory = FAKE_NVML_NO_MEMORY_PATH;
inline constexpr unsigned long long kMiB = 1024ULL * 1024ULL;

// An 8-GPU box: four H100s then four A100s, distinct ids, memory, usage, and telemetry.
// Device i uses 1000*(i+1) MiB of which 256 MiB are reserved by the driver.
inline std::string eight_gpu_box() {
  static const char* const kBus[8] = {"18", "2A", "3A", "5D", "9A", "AB", "BA", "DB"};
  std::string s = "driver_version 550.54.15\nnvml_version 12.550.54.15\ncuda_version 12040\n";
  for (int i = 0; i < 8; ++i) {
    const bool h100 = i < 4;
    s += "device\n";
    s += "uuid GPU-0000000" + std::to_string(i) + "-aaaa-bbbb-cccc-ddddeeeeffff\n";
    s += std::string("name ") + (h100 ? "NVIDIA H100 80GB HBM3" : "NVIDIA A100-SXM4-40GB") + "\n";
    s += std::string("bus_id 00000000:") + kBus[i] + ":00.0\n";
    s += std::string("memory_total_mib ") + (h100 ? "81559" : "40960") + "\n";
    s += "memory_used_mib " + std::to_string(1000 * (i + 1)) + "\n";
    s += "memory_reserved_mib 256\n";
    s += "utilization " + std::to_string(10 * i) + " " + std::to_string(5 * i) + "\n";
    s += "temperature " + std::to_string(30 + i) + "\n";
    s += "power_usage_mw " + std::to_string(100000 + 1234 * i) + "\n";
    s += std::string("power_limit_mw ") + (h100 ? "700000" : "400000") + "\n";
    s += std::string("compute_capability ") + (h100 ? "9 0" : "8 0") + "\n";
  }
  return s;
}

class FakeNvmlTest : public ::testing::Test {
 protected:
  void SetUp() override {
    scenario_path_ = ::testing::TempDir() + "gpumgr_fake_nvml_" + std::to_string(getpid()) + "_" +
                     ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".txt";
    unsetenv("GPUMGR_SIMULATE");
  }
  void TearDown() override {
    unsetenv("GPUMGR_NVML_LIBRARY");
    unsetenv("GPUMGR_FAKE_NVML_SCENARIO");
    std::remove(scenario_path_.c_str());
  }

  // Makes the next NVML load use `library` with this scenario.
  void use(const char* library, const std::string& scenario) {
    library_ = library;
    write(scenario);
    setenv("GPUMGR_NVML_LIBRARY", library, 1);
    setenv("GPUMGR_FAKE_NVML_SCENARIO", scenario_path_.c_str(), 1);
  }
  // Rewrites the scenario and has the already-loaded fake re-read it (a GPU lost or back).
  void change(const std::string& scenario) {
    write(scenario);
    auto reload = hook<int (*)()>("fake_nvml_reload");
    ASSERT_NE(reload, nullptr);
    ASSERT_EQ(reload(), 0);
  }
  // An exported test hook of the loaded fake; null when the fake is not loaded.
  template <typename Fn>
  Fn hook(const char* name) {
    void* handle = dlopen(library_.c_str(), RTLD_NOW | RTLD_NOLOAD);
    if (handle == nullptr) return nullptr;
    void* symbol = dlsym(handle, name);
    dlclose(handle);  // the backend still holds its own reference
    return reinterpret_cast<Fn>(symbol);
  }

  std::string scenario_path_;
  std::string library_;

 private:
  void write(const std::string& scenario) {
    std::ofstream out(scenario_path_, std::ios::trunc);
    out << scenario;
  }
};

}  // namespace gpumgr::testing
