// What the hardware says: the DeviceBackend interface and the records it returns.
//
// A backend reports the devices it manages (NVML GPUs, simulated devices, or host memory as a
// single "cpu" device) and their live state. The manager polls it; it never decides anything.
// Backends are called by the manager under its own lock or from its poller thread; every
// backend must nevertheless be safe to call from any thread (each guards its own state).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gpumgr/status.h"

namespace gpumgr {

enum class DeviceKind { kGpu, kSimulated, kCpu };
std::string_view device_kind_name(DeviceKind kind);  // "gpu", "simulated", "cpu"

// One process using device memory, as the driver reports it.
struct ProcessUsage {
  std::uint32_t pid = 0;
  std::uint64_t used_bytes = 0;
};

// A device's identity and current state. Optional fields are empty where the backend or the
// driver cannot report them (NVML_ERROR_NOT_SUPPORTED, an old driver, the CPU device).
struct DeviceInfo {
  int index = 0;  // position in PCI bus order (the same as nvidia-smi); 0 for the CPU device
  DeviceKind kind = DeviceKind::kSimulated;
  std::string uuid;        // "GPU-8f0d..." for GPUs, "SIM-0" for simulated, "CPU" for the host
  std::string name;        // "NVIDIA H100 80GB HBM3"
  std::string pci_bus_id;  // "00000000:3B:00.0"; empty for non-GPU devices

  std::uint64_t total_bytes = 0;
  std::uint64_t used_bytes = 0;
  std::uint64_t free_bytes = 0;

  std::optional<unsigned> gpu_utilization_percent;
  std::optional<unsigned> memory_utilization_percent;
  std::optional<unsigned> temperature_c;
  std::optional<double> power_draw_w;
  std::optional<double> power_limit_w;
  std::optional<int> compute_capability_major;
  std::optional<int> compute_capability_minor;

  // Per-process usage; `processes_known` is false where the backend cannot list them, in
  // which case the accounting falls back to used_bytes minus what lease holders are known
  // to use.
  bool processes_known = false;
  std::vector<ProcessUsage> processes;

  bool healthy = true;
  std::string health_reason;  // why it is unhealthy ("GPU is lost (NVML error 15)")
};

// Facts about the whole backend rather than one device.
struct BackendInfo {
  std::string name;                 // "nvml", "simulated", "cpu"
  std::string driver_version;       // "550.54.15"; empty where unknown
  std::string cuda_driver_version;  // "12.4"; empty where unknown
  std::string nvml_version;         // empty where unknown
};

class DeviceBackend {
 public:
  virtual ~DeviceBackend() = default;

  virtual BackendInfo info() const = 0;

  // The current state of every device, in index order. The set of devices never changes
  // during a backend's life (a lost GPU stays listed, unhealthy). A failure to read one
  // device marks that device unhealthy; only a failure of the whole backend is an error.
  virtual StatusOr<std::vector<DeviceInfo>> query() = 0;
};

}  // namespace gpumgr
