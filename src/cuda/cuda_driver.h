// The CUDA driver API (libcuda.so.1), loaded at run time, for the two things gpumgr needs from
// inside a process that uses a GPU: waiting for the device's queued work before memory is
// counted as released, and the free/total figures the process's own context sees.
//
// Nothing here ever creates a CUDA context: a context costs hundreds of MiB of device memory,
// so where this process has no active primary context on a device there is nothing to
// synchronise and no memory figure to give. The driver is loaded once per process
// (std::call_once); every function may be called from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "gpumgr/status.h"

namespace gpumgr::cuda {

// OK when libcuda loaded, its symbols resolved and cuInit(0) succeeded; else kUnavailable
// naming the cause ("CUDA driver unavailable: libcuda.so.1: cannot open shared object file:
// ..."). The library is GPUMGR_CUDA_LIBRARY when set (tests), else libcuda.so.1.
Status driver_status();

// Waits for all work queued on the device with this PCI bus id (NVML's form
// "00000000:3B:00.0" or CUDA's "0000:3b:00.0") in this process's primary context. OK without
// doing anything when that context is not active. kNotFound for an unknown bus id.
Status synchronize_device(std::string_view pci_bus_id);

struct DeviceMemory {
  std::uint64_t free_bytes = 0;
  std::uint64_t total_bytes = 0;
};

// cuMemGetInfo in the device's primary context, only if this process already has it active;
// else kFailedPrecondition ("no CUDA context on this device in this process").
StatusOr<DeviceMemory> device_memory(std::string_view pci_bus_id);

// "0000:3b:00.0" from NVML's "00000000:3B:00.0"; the input unchanged when it does not parse.
std::string normalize_pci_bus_id(std::string_view pci_bus_id);

}  // namespace gpumgr::cuda
