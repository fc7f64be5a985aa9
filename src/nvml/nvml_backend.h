// NvmlBackend: the DeviceBackend for NVIDIA GPUs, reading NVML through NvmlLibrary.
//
// It keeps the NVML handle and the last known state of every device found at start-up (NVML
// index order, which is PCI bus order like nvidia-smi). A device whose memory query fails
// (GPU lost, reset required, unknown error, ...) is reported unhealthy with the NVML error
// and keeps its last known identity; it becomes healthy again when it answers again. Only a
// failure of the whole library (every device answering "uninitialised" or "driver not
// loaded") makes query() fail.
//
// Any thread may call any member: query() serialises on an internal mutex, info() reads
// state fixed at construction.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "gpumgr/device.h"
#include "nvml/nvml_library.h"
#include "util/thread_annotations.h"

namespace gpumgr {

class NvmlBackend final : public DeviceBackend {
 public:
  // Takes an initialised library, enumerates its devices and reads them once. kUnavailable
  // when NVML cannot count devices or reports none.
  static StatusOr<std::shared_ptr<NvmlBackend>> create(std::unique_ptr<nvml::NvmlLibrary> lib);

  BackendInfo info() const override { return info_; }
  StatusOr<std::vector<DeviceInfo>> query() override EXCLUDES(mutex_);

  const nvml::NvmlLibrary& library() const { return *lib_; }

 private:
  struct Slot {
    nvml::Device handle = nullptr;  // null until nvmlDeviceGetHandleByIndex succeeds
    bool identity_known = false;    // uuid and name read
    DeviceInfo last;                // the last state reported
  };

  explicit NvmlBackend(std::unique_ptr<nvml::NvmlLibrary> lib);
  // Re-reads one device into slot.last; returns the NVML error that made it unhealthy.
  nvml::Return refresh(Slot& slot, unsigned index) REQUIRES(mutex_);
  nvml::Return read_memory(nvml::Device handle, DeviceInfo& out) REQUIRES(mutex_);
  void read_identity(Slot& slot) const;
  void read_processes(nvml::Device handle, DeviceInfo& out) const;

  const std::unique_ptr<nvml::NvmlLibrary> lib_;
  BackendInfo info_;  // fixed after create()

  Mutex mutex_;
  std::vector<Slot> slots_ GUARDED_BY(mutex_);
  // Cleared when nvmlDeviceGetMemoryInfo_v2 rejects our struct version (a driver with the
  // symbol but another layout): from then on v1 is used.
  bool memory_v2_usable_ GUARDED_BY(mutex_) = true;
};

// How much memory `pid` uses on `device`, from a DeviceInfo the backend returned: nullopt when
// the backend could not list the device's processes, 0 when the pid is not listed. Lets the
// manager tell a lease holder's own usage from foreign usage. Pure; any thread.
std::optional<std::uint64_t> process_used_bytes(const DeviceInfo& device, std::uint32_t pid);

// "12.4" from NVML's CUDA driver version integer (12040); empty for a non-positive value.
std::string format_cuda_version(int version);

}  // namespace gpumgr
