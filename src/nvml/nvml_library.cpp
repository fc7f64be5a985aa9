#include "nvml/nvml_library.h"

#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <functional>
#include <string_view>

namespace gpumgr::nvml {
namespace {

// One row of the entry-point table: the names to try, newest first, and where the result goes.
struct EntryPoint {
  std::array<const char*, 2> names;  // the second is nullptr where there is one version
  bool required;
  std::function<void(void*)> assign;
};

template <typename Fn>
std::function<void(void*)> into(Fn& slot) {
  // dlsym hands back an object pointer; POSIX guarantees it converts to a function pointer.
  return [&slot](void* symbol) { slot = reinterpret_cast<Fn>(symbol); };
}

std::vector<EntryPoint> entry_points(Api& a) {
  constexpr bool kRequired = true;
  constexpr bool kOptional = false;
  return {
      {{"nvmlInit_v2", "nvmlInit"}, kRequired, into(a.init)},
      {{"nvmlShutdown"}, kRequired, into(a.shutdown)},
      {{"nvmlErrorString"}, kOptional, into(a.error_string)},
      {{"nvmlDeviceGetCount_v2", "nvmlDeviceGetCount"}, kRequired, into(a.device_count)},
      {{"nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetHandleByIndex"}, kRequired, into(a.handle)},
      {{"nvmlDeviceGetUUID"}, kRequired, into(a.uuid)},
      {{"nvmlDeviceGetName"}, kRequired, into(a.name)},
      {{"nvmlDeviceGetPciInfo_v3", "nvmlDeviceGetPciInfo_v2"}, kOptional, into(a.pci_info)},
      {{"nvmlDeviceGetMemoryInfo_v2"}, kOptional, into(a.memory_v2)},
      {{"nvmlDeviceGetMemoryInfo"}, kRequired, into(a.memory_v1)},
      {{"nvmlDeviceGetUtilizationRates"}, kOptional, into(a.utilization)},
      {{"nvmlDeviceGetTemperature"}, kOptional, into(a.temperature)},
      {{"nvmlDeviceGetPowerUsage"}, kOptional, into(a.power_usage)},
      {{"nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetPowerManagementLimit"},
       kOptional,
       into(a.power_limit)},
      {{"nvmlDeviceGetCudaComputeCapability"}, kOptional, into(a.compute_capability)},
      {{"nvmlDeviceGetComputeRunningProcesses_v3"}, kOptional, into(a.compute_processes_v3)},
      {{"nvmlDeviceGetComputeRunningProcesses_v2"}, kOptional, into(a.compute_processes_v2)},
      {{"nvmlDeviceGetComputeRunningProcesses"}, kOptional, into(a.compute_processes_v1)},
      {{"nvmlDeviceGetGraphicsRunningProcesses_v3"}, kOptional, into(a.graphics_processes_v3)},
      {{"nvmlDeviceGetGraphicsRunningProcesses_v2"}, kOptional, into(a.graphics_processes_v2)},
      {{"nvmlDeviceGetGraphicsRunningProcesses"}, kOptional, into(a.graphics_processes_v1)},
      {{"nvmlSystemGetDriverVersion"}, kOptional, into(a.driver_version)},
      {{"nvmlSystemGetNVMLVersion"}, kOptional, into(a.nvml_version)},
      {{"nvmlSystemGetCudaDriverVersion_v2", "nvmlSystemGetCudaDriverVersion"},
       kOptional,
       into(a.cuda_driver_version)},
  };
}

std::string dl_error_text() {
  const char* text = dlerror();
  return text != nullptr ? std::string(text) : std::string("unknown dlopen error");
}

}  // namespace

const char* error_name(Return code) {
  switch (code) {
    case kSuccess:
      return "NVML_SUCCESS";
    case kErrorUninitialized:
      return "NVML_ERROR_UNINITIALIZED";
    case kErrorInvalidArgument:
      return "NVML_ERROR_INVALID_ARGUMENT";
    case kErrorNotSupported:
      return "NVML_ERROR_NOT_SUPPORTED";
    case kErrorNoPermission:
      return "NVML_ERROR_NO_PERMISSION";
    case kErrorAlreadyInitialized:
      return "NVML_ERROR_ALREADY_INITIALIZED";
    case kErrorNotFound:
      return "NVML_ERROR_NOT_FOUND";
    case kErrorInsufficientSize:
      return "NVML_ERROR_INSUFFICIENT_SIZE";
    case kErrorInsufficientPower:
      return "NVML_ERROR_INSUFFICIENT_POWER";
    case kErrorDriverNotLoaded:
      return "NVML_ERROR_DRIVER_NOT_LOADED";
    case kErrorTimeout:
      return "NVML_ERROR_TIMEOUT";
    case kErrorIrqIssue:
      return "NVML_ERROR_IRQ_ISSUE";
    case kErrorLibraryNotFound:
      return "NVML_ERROR_LIBRARY_NOT_FOUND";
    case kErrorFunctionNotFound:
      return "NVML_ERROR_FUNCTION_NOT_FOUND";
    case kErrorCorruptedInforom:
      return "NVML_ERROR_CORRUPTED_INFOROM";
    case kErrorGpuIsLost:
      return "NVML_ERROR_GPU_IS_LOST";
    case kErrorResetRequired:
      return "NVML_ERROR_RESET_REQUIRED";
    case kErrorOperatingSystem:
      return "NVML_ERROR_OPERATING_SYSTEM";
    case kErrorLibRmVersionMismatch:
      return "NVML_ERROR_LIB_RM_VERSION_MISMATCH";
    case kErrorInUse:
      return "NVML_ERROR_IN_USE";
    case kErrorMemory:
      return "NVML_ERROR_MEMORY";
    case kErrorNoData:
      return "NVML_ERROR_NO_DATA";
    case kErrorVgpuEccNotEnabled:
      return "NVML_ERROR_VGPU_ECC_NOT_ENABLED";
    case kErrorInsufficientResources:
      return "NVML_ERROR_INSUFFICIENT_RESOURCES";
    case kErrorFreqNotSupported:
      return "NVML_ERROR_FREQ_NOT_SUPPORTED";
    case kErrorArgumentVersionMismatch:
      return "NVML_ERROR_ARGUMENT_VERSION_MISMATCH";
    case kErrorDeprecated:
      return "NVML_ERROR_DEPRECATED";
    case kErrorNotReady:
      return "NVML_ERROR_NOT_READY";
    case kErrorGpuNotFound:
      return "NVML_ERROR_GPU_NOT_FOUND";
    case kErrorInvalidState:
      return "NVML_ERROR_INVALID_STATE";
    case kErrorUnknown:
      return "NVML_ERROR_UNKNOWN";
    default:
      return "unrecognised NVML error";
  }
}

std::vector<std::string> NvmlLibrary::default_candidates() {
  const char* env = std::getenv("GPUMGR_NVML_LIBRARY");
  if (env != nullptr && *env != '\0') return {env};
  return {"libnvidia-ml.so.1", "libnvidia-ml.so"};
}

StatusOr<std::unique_ptr<NvmlLibrary>> NvmlLibrary::open(
    const std::vector<std::string>& candidates) {
  std::unique_ptr<NvmlLibrary> lib(new NvmlLibrary());
  std::string tried;
  for (const std::string& path : candidates) {
    dlerror();
    // RTLD_LOCAL: NVML's symbols must not satisfy anybody else's lookups.
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle != nullptr) {
      lib->handle_ = handle;
      lib->path_ = path;
      break;
    }
    if (!tried.empty()) tried += "; ";
    // dlerror names the file for most failures; say it where it does not.
    std::string why = dl_error_text();
    if (why.find(path) == std::string::npos) why = path + ": " + why;
    tried += why;
  }
  if (lib->handle_ == nullptr) {
    if (candidates.empty()) return Unavailable("NVML unavailable: no library path to try");
    return Unavailable("NVML unavailable: " + tried);
  }

  for (const EntryPoint& entry : entry_points(lib->api_)) {
    void* symbol = nullptr;
    std::string last_error;
    for (const char* name : entry.names) {
      if (name == nullptr) break;
      dlerror();
      symbol = dlsym(lib->handle_, name);
      if (symbol != nullptr) {
        lib->resolved_.emplace_back(name);
        break;
      }
      last_error = dl_error_text();
    }
    if (symbol != nullptr) {
      entry.assign(symbol);
    } else if (entry.required) {
      // The destructor must not call a half-resolved nvmlShutdown before nvmlInit ran.
      lib->api_.shutdown = nullptr;
      return Unavailable("NVML unavailable: " + lib->path_ + " lacks required symbol " +
                         entry.names[0] + ": " + last_error);
    }
  }

  ShutdownFn shutdown = lib->api_.shutdown;
  lib->api_.shutdown = nullptr;  // only shut down what was initialised
  const Return rc = lib->api_.init();
  if (rc != kSuccess) {
    return Unavailable("NVML unavailable: nvmlInit failed in " + lib->path_ + ": " +
                       lib->error_text(rc));
  }
  lib->api_.shutdown = shutdown;
  return lib;
}

NvmlLibrary::~NvmlLibrary() {
  if (api_.shutdown != nullptr) api_.shutdown();
  if (handle_ != nullptr) dlclose(handle_);
}

bool NvmlLibrary::has_symbol(const std::string& name) const {
  return std::find(resolved_.begin(), resolved_.end(), name) != resolved_.end();
}

std::string NvmlLibrary::error_text(Return code) const {
  std::string text;
  if (api_.error_string != nullptr) {
    const char* s = api_.error_string(code);
    if (s != nullptr) text = s;
  }
  if (text.empty()) text = error_name(code);
  return text + " (NVML error " + std::to_string(code) + ")";
}

}  // namespace gpumgr::nvml
