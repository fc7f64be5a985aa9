// The few NVML types, constants and function signatures gpumgr uses, declared here so that the
// build never needs nvml.h or any NVIDIA package (the library is loaded at run time with
// dlopen). Layouts follow the public NVML API reference; each struct's size is checked below
// because a wrong size silently corrupts what the driver writes.
//
// Plain declarations: no state, usable from any thread.
#pragma once

#include <cstddef>
#include <cstdint>

namespace gpumgr::nvml {

// nvmlReturn_t.
using Return = int;
inline constexpr Return kSuccess = 0;
inline constexpr Return kErrorUninitialized = 1;
inline constexpr Return kErrorInvalidArgument = 2;
inline constexpr Return kErrorNotSupported = 3;
inline constexpr Return kErrorNoPermission = 4;
inline constexpr Return kErrorAlreadyInitialized = 5;
inline constexpr Return kErrorNotFound = 6;
inline constexpr Return kErrorInsufficientSize = 7;
inline constexpr Return kErrorInsufficientPower = 8;
inline constexpr Return kErrorDriverNotLoaded = 9;
inline constexpr Return kErrorTimeout = 10;
inline constexpr Return kErrorIrqIssue = 11;
inline constexpr Return kErrorLibraryNotFound = 12;
inline constexpr Return kErrorFunctionNotFound = 13;
inline constexpr Return kErrorCorruptedInforom = 14;
inline constexpr Return kErrorGpuIsLost = 15;
inline constexpr Return kErrorResetRequired = 16;
inline constexpr Return kErrorOperatingSystem = 17;
inline constexpr Return kErrorLibRmVersionMismatch = 18;
inline constexpr Return kErrorInUse = 19;
inline constexpr Return kErrorMemory = 20;
inline constexpr Return kErrorNoData = 21;
inline constexpr Return kErrorVgpuEccNotEnabled = 22;
inline constexpr Return kErrorInsufficientResources = 23;
inline constexpr Return kErrorFreqNotSupported = 24;
inline constexpr Return kErrorArgumentVersionMismatch = 25;
inline constexpr Return kErrorDeprecated = 26;
inline constexpr Return kErrorNotReady = 27;
inline constexpr Return kErrorGpuNotFound = 28;
inline constexpr Return kErrorInvalidState = 29;
inline constexpr Return kErrorUnknown = 999;

// NVML_VALUE_NOT_AVAILABLE as it appears in an unsigned long long field (e.g. usedGpuMemory
// under Windows WDDM or without permission).
inline constexpr unsigned long long kValueNotAvailable = ~0ULL;

// Buffer sizes NVML documents as always large enough (NVML_DEVICE_UUID_V2_BUFFER_SIZE,
// NVML_DEVICE_NAME_V2_BUFFER_SIZE, NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE, ...).
inline constexpr unsigned kUuidBufferSize = 96;
inline constexpr unsigned kNameBufferSize = 96;
inline constexpr unsigned kVersionBufferSize = 80;

// nvmlTemperatureSensors_t: NVML_TEMPERATURE_GPU.
inline constexpr int kTemperatureGpu = 0;

// nvmlDevice_t: an opaque handle.
struct DeviceOpaque;
using Device = DeviceOpaque*;

// nvmlMemory_t (v1): used includes memory reserved by the driver.
struct Memory {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
static_assert(sizeof(Memory) == 24);

// nvmlMemory_v2_t: adds a version field and the reserved amount; used no longer includes
// reserved (what nvidia-smi reports as "used").
struct MemoryV2 {
  unsigned int version;
  unsigned long long total;
  unsigned long long reserved;
  unsigned long long free;
  unsigned long long used;
};
static_assert(sizeof(MemoryV2) == 40);
// NVML_STRUCT_VERSION(Memory, 2).
inline constexpr unsigned int kMemoryV2Version =
    static_cast<unsigned int>(sizeof(MemoryV2)) | (2U << 24);

// nvmlUtilization_t.
struct Utilization {
  unsigned int gpu;
  unsigned int memory;
};

// nvmlPciInfo_t as taken by nvmlDeviceGetPciInfo_v2 and _v3 (v1's layout differs and is only
// in drivers from before 2014, so it is not used).
struct PciInfo {
  char busIdLegacy[16];
  unsigned int domain;
  unsigned int bus;
  unsigned int device;
  unsigned int pciDeviceId;
  unsigned int pciSubSystemId;
  char busId[32];
};
static_assert(sizeof(PciInfo) == 68);

// Process records of the compute/graphics running-process lists. Every version keeps pid at
// offset 0 and usedGpuMemory at offset 8; only the stride differs, which is why the backend
// reads them as raw bytes with the stride of the version it called.
struct ProcessInfoV1 {  // nvmlProcessInfo_v1_t: nvmlDeviceGetComputeRunningProcesses
  unsigned int pid;
  unsigned long long usedGpuMemory;
};
struct ProcessInfoV2 {  // nvmlProcessInfo_v2_t: _v2, and _v3 on current drivers
  unsigned int pid;
  unsigned long long usedGpuMemory;
  unsigned int gpuInstanceId;
  unsigned int computeInstanceId;
};
// Early R535 drivers wrote this larger record from _v3 without a version bump; the backend
// detects that stride (see nvml_backend.cpp).
struct ProcessInfoV3Cc {
  unsigned int pid;
  unsigned long long usedGpuMemory;
  unsigned int gpuInstanceId;
  unsigned int computeInstanceId;
  unsigned long long usedGpuCcProtectedMemory;
};
static_assert(sizeof(ProcessInfoV1) == 16);
static_assert(sizeof(ProcessInfoV2) == 24);
static_assert(sizeof(ProcessInfoV3Cc) == 32);
static_assert(offsetof(ProcessInfoV1, usedGpuMemory) == 8);
static_assert(offsetof(ProcessInfoV2, usedGpuMemory) == 8);
static_assert(offsetof(ProcessInfoV3Cc, usedGpuMemory) == 8);

// Function signatures (all C linkage in the library).
extern "C" {
using InitFn = Return (*)();
using ShutdownFn = Return (*)();
using ErrorStringFn = const char* (*)(Return);
using GetCountFn = Return (*)(unsigned int*);
using GetHandleByIndexFn = Return (*)(unsigned int, Device*);
using GetStringFn = Return (*)(Device, char*, unsigned int);
using SystemGetStringFn = Return (*)(char*, unsigned int);
using SystemGetIntFn = Return (*)(int*);
using GetPciInfoFn = Return (*)(Device, PciInfo*);
using GetMemoryInfoFn = Return (*)(Device, Memory*);
using GetMemoryInfoV2Fn = Return (*)(Device, MemoryV2*);
using GetUtilizationFn = Return (*)(Device, Utilization*);
using GetTemperatureFn = Return (*)(Device, int, unsigned int*);
using GetUintFn = Return (*)(Device, unsigned int*);
using GetComputeCapabilityFn = Return (*)(Device, int*, int*);
// The process-list calls take a typed array; the backend passes raw storage of the right size.
using GetProcessesFn = Return (*)(Device, unsigned int*, void*);
}

}  // namespace gpumgr::nvml
