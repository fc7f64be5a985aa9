// The NVML backend through the real dlopen path, against the fake libnvidia-ml.
#include "nvml/nvml_backend.h"

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "fake_nvml_fixture.h"
#include "gpumgr/backends.h"
#include "nvml/nvml_library.h"

namespace gpumgr {
namespace {

using testing::eight_gpu_box;
using testing::kFakeNvml;
using testing::kFakeNvmlNoMemory;
using testing::kFakeNvmlOld;
using testing::kMiB;

class NvmlBackendTest : public testing::FakeNvmlTest {
 protected:
  std::shared_ptr<DeviceBackend> open_ok() {
    auto backend = make_nvml_backend();
    EXPECT_TRUE(backend.ok()) << backend.status().to_string();
    return backend.ok() ? backend.value() : nullptr;
  }
  std::vector<DeviceInfo> query_ok(DeviceBackend& backend) {
    auto devices = backend.query();
    EXPECT_TRUE(devices.ok()) << devices.status().to_string();
    return devices.ok() ? devices.value() : std::vector<DeviceInfo>{};
  }
};

// One device with three compute processes, one of them without a memory figure.
const char* kOneGpuWithProcesses =
    "device\nuuid GPU-one\nname NVIDIA L4\nbus_id 00000000:01:00.0\n"
    "memory_total_mib 23034\nmemory_used_mib 6000\nmemory_reserved_mib 300\n"
    "process 4242 2048\nprocess 4343 na\nprocess 4444 1024\n";

TEST_F(NvmlBackendTest, EightGpuBoxReportsEveryDeviceInPciOrder) {
  use(kFakeNvml, eight_gpu_box());
  auto backend = open_ok();
  ASSERT_NE(backend, nullptr);
  const auto devices = query_ok(*backend);
  ASSERT_EQ(devices.size(), 8u);
  for (int i = 0; i < 8; ++i) {
    SCOPED_TRACE(i);
    const DeviceInfo& d = devices[i];
    const bool h100 = i < 4;
    EXPECT_EQ(d.index, i);
    EXPECT_EQ(d.kind, DeviceKind::kGpu);
    EXPECT_EQ(d.uuid, "GPU-0000000" + std::to_string(i) + "-aaaa-bbbb-cccc-ddddeeeeffff");
    EXPECT_EQ(d.name, h100 ? "NVIDIA H100 80GB HBM3" : "NVIDIA A100-SXM4-40GB");
    const std::uint64_t total = (h100 ? 81559 : 40960) * kMiB;
    const std::uint64_t used_with_reserved = 1000ULL * (i + 1) * kMiB;
    EXPECT_EQ(d.total_bytes, total);
    // nvmlDeviceGetMemoryInfo_v2: used without the driver's reserved part, like nvidia-smi.
    EXPECT_EQ(d.used_bytes, used_with_reserved - 256 * kMiB);
    EXPECT_EQ(d.free_bytes, total - used_with_reserved);
    EXPECT_EQ(d.gpu_utilization_percent, 10u * i);
    EXPECT_EQ(d.memory_utilization_percent, 5u * i);
    EXPECT_EQ(d.temperature_c, 30u + i);
    ASSERT_TRUE(d.power_draw_w.has_value());
    EXPECT_DOUBLE_EQ(*d.power_draw_w, (100000 + 1234 * i) / 1000.0);  // mW -> W
    EXPECT_EQ(d.power_limit_w, h100 ? 700.0 : 400.0);
    EXPECT_EQ(d.compute_capability_major, h100 ? 9 : 8);
    EXPECT_EQ(d.compute_capability_minor, 0);
    EXPECT_TRUE(d.healthy);
    EXPECT_TRUE(d.health_reason.empty());
    EXPECT_TRUE(d.processes_known);
    EXPECT_TRUE(d.processes.empty());
  }
  EXPECT_EQ(devices[0].pci_bus_id, "00000000:18:00.0");
  EXPECT_EQ(devices[7].pci_bus_id, "00000000:DB:00.0");
  const BackendInfo info = backend->info();
  EXPECT_EQ(info.name, "nvml");
  EXPECT_EQ(info.driver_version, "550.54.15");
  EXPECT_EQ(info.cuda_driver_version, "12.4");
  EXPECT_EQ(info.nvml_version, "12.550.54.15");
}

TEST_F(NvmlBackendTest, MemoryV2GetsTheVersionedStruct) {
  use(kFakeNvml, eight_gpu_box());
  auto backend = open_ok();
  ASSERT_NE(backend, nullptr);
  query_ok(*backend);
  auto last_version = hook<unsigned (*)()>("fake_nvml_last_memory_version");
  ASSERT_NE(last_version, nullptr);
  // NVML_STRUCT_VERSION(Memory, 2): sizeof(nvmlMemory_v2_t) = 40, version 2 in the top byte.
  EXPECT_EQ(last_version(), 40u | (2u << 24));
  EXPECT_EQ(nvml::kMemoryV2Version, 0x02000028u);
}

TEST_F(NvmlBackendTest, MemoryV2VersionMismatchFallsBackToV1) {
  use(kFakeNvml, "memory_v2_mismatch 1\n" + eight_gpu_box());
  auto backend = open_ok();
  ASSERT_NE(backend, nullptr);
  const auto devices = query_ok(*backend);
  ASSERT_EQ(devices.size(), 8u);
  // v1 "used" includes the reserved memory.
  EXPECT_EQ(devices[2].used_bytes, 3000 * kMiB);
  EXPECT_EQ(devices[2].free_bytes, (81559 - 3000) * kMiB);
  EXPECT_TRUE(devices[2].healthy);
}

TEST_F(NvmlBackendTest, ProcessListPrefersV3) {
  use(kFakeNvml, kOneGpuWithProcesses);
  auto backend = open_ok();
  ASSERT_NE(backend, nullptr);
  const auto devices = query_ok(*backend);
  ASSERT_EQ(devices.size(), 1u);
  auto last_process_version = hook<int (*)()>("fake_nvml_last_process_version");
  ASSERT_NE(last_process_version, nullptr);
  EXPECT_EQ(last_process_version(), 3);
  const DeviceInfo& d = devices[0];
  ASSERT_TRUE(d.processes_known);
  ASSERT_EQ(d.processes.size(), 3u);
  EXPECT_EQ(d.processes[0].pid, 4242u);
  EXPECT_EQ(d.processes[0].used_bytes, 2048 * kMiB);
  EXPECT_EQ(d.processes[1].pid, 4343u);
  EXPECT_EQ(d.processes[1].used_bytes, 0u);  // NVML_VALUE_NOT_AVAILABLE
  EXPECT_EQ(d.processes[2].pid, 4444u);
  EXPECT_EQ(d.processes[2].used_bytes, 1024 * kMiB);
  EXPECT_EQ(process_used_bytes(d, 4444), 1024 * kMiB);
  EXPECT_EQ(process_used_bytes(d, 1), 0u);
}

TEST_F(NvmlBackendTest, ProcessListV3WithWideRecordsOfEarlyR535) {
  use(kFakeNvml, std::string("process_v3_stride 32\n") + kOneGpuWithProcesses);
  auto backend = open_ok();
  ASSERT_NE(backend, nullptr);
  const auto devices = query_ok(*backend);
  ASSERT_EQ(devices.size(), 1u);
  ASSERT_EQ(devices[0].processes.size(), 3u);
  EXPECT_EQ(devices[0].processes[1].pid, 4343u);
  EXPECT_EQ(devices[0].processes[2].pid, 4444u);
  EXPECT_EQ(devices[0].processes[2].used_bytes, 1024 * kMiB);
}

TEST_F(NvmlBackendTest, ManyProcessesGrowTheBuffer) {
  std::string scenario = "device\nuuid GPU-x\nname X\nmemory_total_mib 1000\nmemory_used_mib 100\n";
  for (int pid = 1000; pid < 1064; ++pid) scenario += "process " + std::to_string(pid) + " 1\n";
  use(kFakeNvml, scenario);
  auto backend = open_ok();
  ASSERT_NE(backend, nullptr);
  const auto devices = query_ok(*backend);
  ASSERT_EQ(devices.size(), 1u);
  ASSERT_EQ(devices[0].processes.size(), 64u);
  EXPECT_EQ(devices[0].processes[63].pid, 1063u);
  EXPECT_EQ(devices[0].processes[63].used_bytes, kMiB);
}

TEST_F(NvmlBackendTest, GraphicsProcessesAreMergedWithComputeOnes) {
  use(kFakeNvml,
      "device\nuuid GPU-g\nname G\nmemory_total_mib 8192\nmemory_used_mib 1000\n"
      "process 10 300\ngraphics_process 10 300\ngraphics_process 20 150\n");
  auto backend = open_ok();
  ASSERT_NE(backend, nullptr);
  const auto devices = query_ok(*backend);
  ASSERT_EQ(devices.size(), 1u);
  ASSERT_EQ(devices[0].processes.size(), 2u);
  EXPECT_EQ(process_used_bytes(devices[0], 10), 300 * kMiB);
  EXPECT_EQ(process_used_bytes(devices[0], 20), 150 * kMiB);
}

TEST_F(NvmlBackendTest, OldDriverUsesUnversionedSymbols) {
  use(kFakeNvmlOld, kOneGpuWithProcesses);
  auto lib = nvml::NvmlLibrary::open();
  ASSERT_TRUE(lib.ok()) << lib.status().to_string();
  EXPECT_TRUE(lib.value()->has_symbol("nvmlInit"));
  EXPECT_FALSE(lib.value()->has_symbol("nvmlInit_v2"));
  EXPECT_TRUE(lib.value()->has_symbol("nvmlDeviceGetCount"));
  EXPECT_TRUE(lib.value()->has_symbol("nvmlDeviceGetHandleByIndex"));
  EXPECT_EQ(lib.value()->api().memory_v2, nullptr);
  EXPECT_EQ(lib.value()->api().compute_processes_v3, nullptr);
  EXPECT_NE(lib.value()->api().compute_processes_v1, nullptr);
  lib.value().reset();

  auto backend = open_ok();
  ASSERT_NE(backend, nullptr);
  const auto devices = query_ok(*backend);
  ASSERT_EQ(devices.size(), 1u);
  const DeviceInfo& d = devices[0];
  EXPECT_EQ(d.uuid, "GPU-one");
  EXPECT_EQ(d.pci_bus_id, "00000000:01:00.0");
  EXPECT_EQ(d.used_bytes, 6000 * kMiB);  // v1: including reserved
  EXPECT_EQ(d.free_bytes, (23034 - 6000) * kMiB);
  auto last_process_version = hook<int (*)()>("fake_nvml_last_process_version");
  ASSERT_NE(last_process_version, nullptr);
  EXPECT_EQ(last_process_version(), 1);
  // 16-byte v1 records read with the right stride.
  ASSERT_EQ(d.processes.size(), 3u);
  EXPECT_EQ(d.processes[2].pid, 4444u);
  EXPECT_EQ(d.processes[2].used_bytes, 1024 * kMiB);
  EXPECT_EQ(backend->info().cuda_driver_version, "12.4");  // nvmlSystemGetCudaDriverVersion
}

TEST_F(NvmlBackendTest, MissingLibraryIsUnavailableAndNamesThePath) {
  use("/nonexistent/gpumgr-test/libnvidia-ml.so.1", "");
  auto backend = make_nvml_backend();
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().code(), ErrorCode::kUnavailable);
  EXPECT_NE(backend.status().message().find("/nonexistent/gpumgr-test/libnvidia-ml.so.1"),
            std::string::npos)
      << backend.status().message();
  EXPECT_NE(backend.status().message().find("cannot open shared object file"), std::string::npos)
      << backend.status().message();
}

TEST_F(NvmlBackendTest, DefaultCandidatesWithoutTheVariable) {
  unsetenv("GPUMGR_NVML_LIBRARY");
  EXPECT_EQ(nvml::NvmlLibrary::default_candidates(),
            (std::vector<std::string>{"libnvidia-ml.so.1", "libnvidia-ml.so"}));
  setenv("GPUMGR_NVML_LIBRARY", "/opt/x/libnvidia-ml.so.1", 1);
  EXPECT_EQ(nvml::NvmlLibrary::default_candidates(),
            (std::vector<std::string>{"/opt/x/libnvidia-ml.so.1"}));
}

TEST_F(NvmlBackendTest, MissingRequiredSymbolIsUnavailable) {
  use(kFakeNvmlNoMemory, eight_gpu_box());
  auto backend = make_nvml_backend();
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().code(), ErrorCode::kUnavailable);
  EXPECT_NE(backend.status().message().find("lacks required symbol nvmlDeviceGetMemoryInfo"),
            std::string::npos)
      << backend.status().message();
  EXPECT_NE(backend.status().message().find("undefined symbol"), std::string::npos)
      << backend.status().message();  // the dlerror text
}

TEST_F(NvmlBackendTest, InitFailureIsUnavailableWithTheNvmlError) {
  use(kFakeNvml, "init_error 9\n" + eight_gpu_box());
  auto backend = make_nvml_backend();
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().code(), ErrorCode::kUnavailable);
  EXPECT_NE(backend.status().message().find("Driver Not Loaded (NVML error 9)"), std::string::npos)
      << backend.status().message();
}

TEST_F(NvmlBackendTest, NoGpusIsUnavailable) {
  use(kFakeNvml, "driver_version 550.54.15\n");
  auto backend = make_nvml_backend();
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().code(), ErrorCode::kUnavailable);
  EXPECT_NE(backend.status().message().find("NVML reports no GPUs"), std::string::npos)
      << backend.status().message();
}

TEST_F(NvmlBackendTest, ShutsNvmlDownOnDestruction) {
  use(kFakeNvml, eight_gpu_box());
  // Keep the fake loaded past the backend so its counter can be read afterwards.
  void* keep = dlopen(kFakeNvml, RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(keep, nullptr);
  auto init_count = reinterpret_cast<int (*)()>(dlsym(keep, "fake_nvml_init_count"));
  ASSERT_NE(init_count, nullptr);
  {
    auto backend = open_ok();
    ASSERT_NE(backend, nullptr);
    EXPECT_EQ(init_count(), 1);
  }
  EXPECT_EQ(init_count(), 0);
  dlclose(keep);
}

TEST_F(NvmlBackendTest, LostGpuIsUnhealthyOthersAnswerAndItRecovers) {
  const std::string box = eight_gpu_box();
  use(kFakeNvml, box);
  auto backend = open_ok();
  ASSERT_NE(backend, nullptr);
  ASSERT_EQ(query_ok(*backend).size(), 8u);

  // Device 3 falls off the bus: its memory query answers NVML_ERROR_GPU_IS_LOST.
  std::string lost = box;
  const std::string marker = "uuid GPU-00000003";
  lost.insert(lost.find(marker), "error memory 15\nerror utilization 15\n");
  change(lost);
  auto devices = query_ok(*backend);
  ASSERT_EQ(devices.size(), 8u);
  EXPECT_FALSE(devices[3].healthy);
  EXPECT_NE(devices[3].health_reason.find("GPU is lost (NVML error 15)"), std::string::npos)
      << devices[3].health_reason;
  EXPECT_EQ(devices[3].index, 3);
  EXPECT_EQ(devices[3].uuid, "GPU-00000003-aaaa-bbbb-cccc-ddddeeeeffff");  // last known
  EXPECT_EQ(devices[3].name, "NVIDIA H100 80GB HBM3");
  EXPECT_EQ(devices[3].pci_bus_id, "00000000:5D:00.0");
  EXPECT_FALSE(devices[3].gpu_utilization_percent.has_value());
  EXPECT_FALSE(devices[3].processes_known);
  for (int i : {0, 1, 2, 4, 5, 6, 7}) {
    SCOPED_TRACE(i);
    EXPECT_TRUE(devices[i].healthy);
    EXPECT_EQ(devices[i].used_bytes, (1000ULL * (i + 1) - 256) * kMiB);
  }

  // An unknown error is reported the same way, named by nvmlErrorString.
  std::string unknown = box;
  unknown.insert(unknown.find(marker), "error memory 999\n");
  change(unknown);
  devices = query_ok(*backend);
  EXPECT_FALSE(devices[3].healthy);
  EXPECT_NE(devices[3].health_reason.find("Unknown Error (NVML error 999)"), std::string::npos)
      << devices[3].health_reason;

  // It answers again: healthy, with live values.
  change(box);
  devices = query_ok(*backend);
  EXPECT_TRUE(devices[3].healthy);
  EXPECT_TRUE(devices[3].health_reason.empty());
  EXPECT_EQ(devices[3].used_bytes, (4000ULL - 256) * kMiB);
  EXPECT_EQ(devices[3].gpu_utilization_percent, 30u);
}

TEST_F(NvmlBackendTest, GpuLostAtStartupIsListedAndLearnsItsIdentityLater) {
  const std::string box = eight_gpu_box();
  std::string lost = box;
  lost.insert(lost.find("uuid GPU-00000001"), "error handle 15\n");
  use(kFakeNvml, lost);
  auto backend = open_ok();
  ASSERT_NE(backend, nullptr);
  auto devices = query_ok(*backend);
  ASSERT_EQ(devices.size(), 8u);
  EXPECT_FALSE(devices[1].healthy);
  EXPECT_EQ(devices[1].index, 1);
  EXPECT_EQ(devices[1].kind, DeviceKind::kGpu);
  EXPECT_NE(devices[1].health_reason.find("GPU is lost"), std::string::npos);
  EXPECT_TRUE(devices[0].healthy);
  EXPECT_TRUE(devices[2].healthy);

  change(box);
  devices = query_ok(*backend);
  EXPECT_TRUE(devices[1].healthy);
  EXPECT_EQ(devices[1].uuid, "GPU-00000001-aaaa-bbbb-cccc-ddddeeeeffff");
  EXPECT_EQ(devices[1].total_bytes, 81559 * kMiB);
}

TEST_F(NvmlBackendTest, NotSupportedFieldsAreEmpty) {
  use(kFakeNvml,
      "device\nuuid GPU-ns\nname NVIDIA T4\nmemory_total_mib 15360\nmemory_used_mib 500\n"
      "error utilization 3\nerror temperature 3\nerror power_usage 3\nerror power_limit 3\n"
      "error compute_capability 3\nerror compute_processes 3\n");
  auto backend = open_ok();
  ASSERT_NE(backend, nullptr);
  const auto devices = query_ok(*backend);
  ASSERT_EQ(devices.size(), 1u);
  const DeviceInfo& d = devices[0];
  EXPECT_TRUE(d.healthy);
  EXPECT_EQ(d.total_bytes, 15360 * kMiB);
  EXPECT_FALSE(d.gpu_utilization_percent.has_value());
  EXPECT_FALSE(d.memory_utilization_percent.has_value());
  EXPECT_FALSE(d.temperature_c.has_value());
  EXPECT_FALSE(d.power_draw_w.has_value());
  EXPECT_FALSE(d.power_limit_w.has_value());
  EXPECT_FALSE(d.compute_capability_major.has_value());
  EXPECT_FALSE(d.processes_known);
  EXPECT_EQ(process_used_bytes(d, 1), std::nullopt);
}

TEST_F(NvmlBackendTest, WholeLibraryFailureIsAnError) {
  const std::string two =
      "device\nuuid GPU-a\nname A\nmemory_total_mib 100\nmemory_used_mib 1\n"
      "device\nuuid GPU-b\nname B\nmemory_total_mib 100\nmemory_used_mib 1\n";
  use(kFakeNvml, two);
  auto backend = open_ok();
  ASSERT_NE(backend, nullptr);
  std::string broken = two;
  broken.insert(broken.find("uuid GPU-a"), "error memory 9\n");
  broken.insert(broken.find("uuid GPU-b"), "error memory 9\n");
  change(broken);
  auto devices = backend->query();
  ASSERT_FALSE(devices.ok());
  EXPECT_EQ(devices.status().code(), ErrorCode::kUnavailable);
  EXPECT_NE(devices.status().message().find("Driver Not Loaded"), std::string::npos)
      << devices.status().message();

  // One device failing that way is a device problem, not a library one.
  broken = two;
  broken.insert(broken.find("uuid GPU-b"), "error memory 9\n");
  change(broken);
  auto partial = query_ok(*backend);
  ASSERT_EQ(partial.size(), 2u);
  EXPECT_TRUE(partial[0].healthy);
  EXPECT_FALSE(partial[1].healthy);
}

TEST_F(NvmlBackendTest, ConcurrentQueriesAgree) {
  use(kFakeNvml, eight_gpu_box());
  auto backend = open_ok();
  ASSERT_NE(backend, nullptr);
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int q = 0; q < 50; ++q) {
        auto devices = backend->query();
        if (devices.ok() && devices->size() == 8 && (*devices)[7].used_bytes == (8000 - 256) * kMiB)
          ++good;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(good.load(), 200);
}

TEST_F(NvmlBackendTest, MissingDefaultLibrariesAreAllNamed) {
  auto lib = nvml::NvmlLibrary::open({"/nonexistent/a/libnvidia-ml.so.1", "/nonexistent/b.so"});
  ASSERT_FALSE(lib.ok());
  EXPECT_EQ(lib.status().code(), ErrorCode::kUnavailable);
  EXPECT_NE(lib.status().message().find("/nonexistent/a/libnvidia-ml.so.1"), std::string::npos);
  EXPECT_NE(lib.status().message().find("/nonexistent/b.so"), std::string::npos);
}

TEST(NvmlFormat, CudaDriverVersion) {
  EXPECT_EQ(format_cuda_version(12040), "12.4");
  EXPECT_EQ(format_cuda_version(11080), "11.8");
  EXPECT_EQ(format_cuda_version(12000), "12.0");
  EXPECT_EQ(format_cuda_version(0), "");
}

TEST(NvmlFormat, ErrorNames) {
  EXPECT_STREQ(nvml::error_name(nvml::kErrorGpuIsLost), "NVML_ERROR_GPU_IS_LOST");
  EXPECT_STREQ(nvml::error_name(nvml::kErrorResetRequired), "NVML_ERROR_RESET_REQUIRED");
  EXPECT_STREQ(nvml::error_name(12345), "unrecognised NVML error");
}

}  // namespace
}  // namespace gpumgr
