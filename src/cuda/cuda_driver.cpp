#include "cuda/cuda_driver.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>

namespace gpumgr::cuda {
namespace {

// The driver API types we use, declared here so that no CUDA header is needed.
using CUresult = int;
using CUdevice = int;
struct CUctxOpaque;
using CUcontext = CUctxOpaque*;
constexpr CUresult kCudaSuccess = 0;
constexpr CUresult kCudaErrorInvalidValue = 1;
constexpr CUresult kCudaErrorInvalidDevice = 101;

extern "C" {
using InitFn = CUresult (*)(unsigned int);
using GetErrorStringFn = CUresult (*)(CUresult, const char**);
using DeviceGetByPciBusIdFn = CUresult (*)(CUdevice*, const char*);
using PrimaryCtxGetStateFn = CUresult (*)(CUdevice, unsigned int*, int*);
using PrimaryCtxRetainFn = CUresult (*)(CUcontext*, CUdevice);
using PrimaryCtxReleaseFn = CUresult (*)(CUdevice);
using CtxPushFn = CUresult (*)(CUcontext);
using CtxPopFn = CUresult (*)(CUcontext*);
using CtxSynchronizeFn = CUresult (*)();
using MemGetInfoFn = CUresult (*)(std::size_t*, std::size_t*);
}

struct Driver {
  Status status;  // why the driver is unusable; OK when every pointer below is set
  GetErrorStringFn error_string = nullptr;  // optional
  DeviceGetByPciBusIdFn device_by_pci = nullptr;
  PrimaryCtxGetStateFn primary_state = nullptr;
  PrimaryCtxRetainFn primary_retain = nullptr;
  PrimaryCtxReleaseFn primary_release = nullptr;
  CtxPushFn push = nullptr;
  CtxPopFn pop = nullptr;
  CtxSynchronizeFn synchronize = nullptr;
  MemGetInfoFn mem_get_info = nullptr;  // cuMemGetInfo_v2: size_t figures (v1 is 32-bit)
};

template <typename Fn>
bool resolve(void* handle, Fn& slot, const char* name, std::string* missing) {
  slot = reinterpret_cast<Fn>(dlsym(handle, name));
  if (slot == nullptr && missing->empty()) missing->assign(name);
  return slot != nullptr;
}

void load(Driver& d) {
  const char* env = std::getenv("GPUMGR_CUDA_LIBRARY");
  const std::string path = (env != nullptr && *env != '\0') ? env : "libcuda.so.1";
  dlerror();
  // Never dlclosed: contexts and their threads may outlive any owner we could give it.
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* err = dlerror();
    d.status = Unavailable("CUDA driver unavailable: " + std::string(err != nullptr ? err : path));
    return;
  }
  InitFn init = nullptr;
  std::string missing;
  resolve(handle, init, "cuInit", &missing);
  resolve(handle, d.device_by_pci, "cuDeviceGetByPCIBusId", &missing);
  resolve(handle, d.primary_state, "cuDevicePrimaryCtxGetState", &missing);
  resolve(handle, d.primary_retain, "cuDevicePrimaryCtxRetain", &missing);
  // Newest first: _v2 since CUDA 11, the unversioned name before.
  std::string ignored;
  if (!resolve(handle, d.primary_release, "cuDevicePrimaryCtxRelease_v2", &ignored)) {
    resolve(handle, d.primary_release, "cuDevicePrimaryCtxRelease", &missing);
  }
  resolve(handle, d.push, "cuCtxPushCurrent_v2", &missing);
  resolve(handle, d.pop, "cuCtxPopCurrent_v2", &missing);
  resolve(handle, d.synchronize, "cuCtxSynchronize", &missing);
  resolve(handle, d.mem_get_info, "cuMemGetInfo_v2", &missing);
  resolve(handle, d.error_string, "cuGetErrorString", &ignored);
  if (!missing.empty()) {
    d.status = Unavailable("CUDA driver unavailable: " + path + " lacks " + missing);
    return;
  }
  const CUresult rc = init(0);
  if (rc != kCudaSuccess) {
    const char* text = nullptr;
    if (d.error_string != nullptr) d.error_string(rc, &text);
    d.status = Unavailable("CUDA driver unavailable: cuInit failed: " +
                           std::string(text != nullptr ? text : "CUDA error") + " (" +
                           std::to_string(rc) + ")");
  }
}

const Driver& driver() {
  static Driver d;
  static std::once_flag once;
  std::call_once(once, [] { load(d); });
  return d;
}

std::string error_text(const Driver& d, CUresult rc) {
  const char* text = nullptr;
  if (d.error_string != nullptr) d.error_string(rc, &text);
  return std::string(text != nullptr ? text : "CUDA error") + " (" + std::to_string(rc) + ")";
}

// The device for a bus id, and whether this process's primary context on it is active.
struct Target {
  CUdevice device = 0;
  bool active = false;
};

StatusOr<Target> find(const Driver& d, std::string_view pci_bus_id) {
  Target t;
  const std::string id = normalize_pci_bus_id(pci_bus_id);
  CUresult rc = d.device_by_pci(&t.device, id.c_str());
  if (rc == kCudaErrorInvalidDevice || rc == kCudaErrorInvalidValue) {
    return NotFound("no CUDA device with PCI bus id " + std::string(pci_bus_id) + ": " +
                    error_text(d, rc));
  }
  if (rc != kCudaSuccess) {
    return Unavailable("cuDeviceGetByPCIBusId(" + id + ") failed: " + error_text(d, rc));
  }
  unsigned flags = 0;
  int active = 0;
  rc = d.primary_state(t.device, &flags, &active);
  if (rc != kCudaSuccess) {
    return Unavailable("cuDevicePrimaryCtxGetState failed: " + error_text(d, rc));
  }
  t.active = active != 0;
  return t;
}

// Runs `body` with the device's primary context current on this thread. Retaining an active
// primary context only bumps its reference count; the caller has checked it is active. (If
// another thread of this process releases the last reference in between, the retain would
// create a context: the narrow race every primary-context user has.)
template <typename Body>
Status with_primary_context(const Driver& d, CUdevice device, Body body) {
  CUcontext ctx = nullptr;
  CUresult rc = d.primary_retain(&ctx, device);
  if (rc != kCudaSuccess)
    return Unavailable("cuDevicePrimaryCtxRetain failed: " + error_text(d, rc));
  rc = d.push(ctx);
  if (rc != kCudaSuccess) {
    d.primary_release(device);
    return Unavailable("cuCtxPushCurrent failed: " + error_text(d, rc));
  }
  Status result = body();
  CUcontext popped = nullptr;
  d.pop(&popped);
  d.primary_release(device);
  return result;
}

}  // namespace

std::string normalize_pci_bus_id(std::string_view pci_bus_id) {
  const std::string text(pci_bus_id);
  unsigned domain = 0, bus = 0, dev = 0, function = 0;
  char tail = '\0';
  if (std::sscanf(text.c_str(), "%x:%x:%x.%x%c", &domain, &bus, &dev, &function, &tail) != 4) {
    return text;
  }
  char out[32];
  std::snprintf(out, sizeof out, "%04x:%02x:%02x.%x", domain, bus, dev, function);
  return out;
}

Status driver_status() { return driver().status; }

Status synchronize_device(std::string_view pci_bus_id) {
  const Driver& d = driver();
  if (!d.status.ok()) return d.status;
  auto target = find(d, pci_bus_id);
  if (!target.ok()) return target.status();
  if (!target->active) return Status::Ok();  // no context: no work queued by this process
  return with_primary_context(d, target->device, [&d]() -> Status {
    const CUresult rc = d.synchronize();
    if (rc != kCudaSuccess) return Unavailable("cuCtxSynchronize failed: " + error_text(d, rc));
    return Status::Ok();
  });
}

StatusOr<DeviceMemory> device_memory(std::string_view pci_bus_id) {
  const Driver& d = driver();
  if (!d.status.ok()) return d.status;
  auto target = find(d, pci_bus_id);
  if (!target.ok()) return target.status();
  if (!target->active) {
    return Status(ErrorCode::kFailedPrecondition, "no CUDA context on this device in this process");
  }
  DeviceMemory memory;
  Status status = with_primary_context(d, target->device, [&]() -> Status {
    std::size_t free = 0;
    std::size_t total = 0;
    const CUresult rc = d.mem_get_info(&free, &total);
    if (rc != kCudaSuccess) return Unavailable("cuMemGetInfo failed: " + error_text(d, rc));
    memory.free_bytes = free;
    memory.total_bytes = total;
    return Status::Ok();
  });
  if (!status.ok()) return status;
  return memory;
}

}  // namespace gpumgr::cuda
