// NvmlLibrary: libnvidia-ml loaded at run time, its entry points resolved from one table, and
// nvmlInit/nvmlShutdown paired with the object's life.
//
// The table (nvml_library.cpp) lists every symbol gpumgr calls, newest versioned name first,
// each marked required or optional (the nvtop/DCGM pattern): a missing optional symbol leaves
// its pointer null and turns one feature off; a missing required one makes open() fail with
// kUnavailable and the dlerror text. Once open() returns, the object is immutable; NVML itself
// is thread-safe, so any thread may call through api() concurrently.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "gpumgr/status.h"
#include "nvml/nvml_types.h"

namespace gpumgr::nvml {

// Resolved entry points. Where several versions of one call take different structs, each
// version has its own pointer; where they share a signature, the newest found is stored.
struct Api {
  InitFn init = nullptr;                   // nvmlInit_v2, nvmlInit        (required)
  ShutdownFn shutdown = nullptr;           // nvmlShutdown                 (required)
  ErrorStringFn error_string = nullptr;    // nvmlErrorString              (optional)
  GetCountFn device_count = nullptr;       // nvmlDeviceGetCount_v2, v1    (required)
  GetHandleByIndexFn handle = nullptr;     // ..GetHandleByIndex_v2, v1    (required)
  GetStringFn uuid = nullptr;              // nvmlDeviceGetUUID            (required)
  GetStringFn name = nullptr;              // nvmlDeviceGetName            (required)
  GetPciInfoFn pci_info = nullptr;         // ..GetPciInfo_v3, _v2         (optional)
  GetMemoryInfoV2Fn memory_v2 = nullptr;   // nvmlDeviceGetMemoryInfo_v2   (optional)
  GetMemoryInfoFn memory_v1 = nullptr;     // nvmlDeviceGetMemoryInfo      (required)
  GetUtilizationFn utilization = nullptr;  // ..GetUtilizationRates        (optional)
  GetTemperatureFn temperature = nullptr;  // ..GetTemperature             (optional)
  GetUintFn power_usage = nullptr;         // ..GetPowerUsage (mW)         (optional)
  GetUintFn power_limit = nullptr;  // ..GetEnforcedPowerLimit, ..GetPowerManagementLimit (opt.)
  GetComputeCapabilityFn compute_capability = nullptr;  // ..GetCudaComputeCapability (opt.)
  GetProcessesFn compute_processes_v3 = nullptr;        // (optional, each of the three)
  GetProcessesFn compute_processes_v2 = nullptr;
  GetProcessesFn compute_processes_v1 = nullptr;
  GetProcessesFn graphics_processes_v3 = nullptr;  // (optional, each of the three)
  GetProcessesFn graphics_processes_v2 = nullptr;
  GetProcessesFn graphics_processes_v1 = nullptr;
  SystemGetStringFn driver_version = nullptr;    // nvmlSystemGetDriverVersion   (optional)
  SystemGetStringFn nvml_version = nullptr;      // nvmlSystemGetNVMLVersion     (optional)
  SystemGetIntFn cuda_driver_version = nullptr;  // ..GetCudaDriverVersion_v2, v1 (optional)
};

class NvmlLibrary {
 public:
  // The candidates tried in order: GPUMGR_NVML_LIBRARY alone when it is set and non-empty,
  // else libnvidia-ml.so.1 then libnvidia-ml.so.
  static std::vector<std::string> default_candidates();

  // Loads the first candidate that dlopen accepts, resolves the table and calls nvmlInit.
  // kUnavailable names every path tried with its dlerror text, a missing required symbol, or
  // the nvmlInit error.
  static StatusOr<std::unique_ptr<NvmlLibrary>> open(const std::vector<std::string>& candidates);
  static StatusOr<std::unique_ptr<NvmlLibrary>> open() { return open(default_candidates()); }

  ~NvmlLibrary();  // nvmlShutdown, then dlclose
  NvmlLibrary(const NvmlLibrary&) = delete;
  NvmlLibrary& operator=(const NvmlLibrary&) = delete;

  const Api& api() const { return api_; }
  const std::string& path() const { return path_; }
  // The symbol name each table slot resolved to ("nvmlInit_v2"), for diagnostics and tests.
  const std::vector<std::string>& resolved_symbols() const { return resolved_; }
  bool has_symbol(const std::string& name) const;

  // "GPU is lost (NVML error 15)": nvmlErrorString's text where present, else our own name.
  std::string error_text(Return code) const;

 private:
  NvmlLibrary() = default;

  void* handle_ = nullptr;
  std::string path_;
  Api api_;
  std::vector<std::string> resolved_;
};

// NVML's own name for a code ("NVML_ERROR_GPU_IS_LOST"); used where nvmlErrorString is absent.
const char* error_name(Return code);

}  // namespace gpumgr::nvml
