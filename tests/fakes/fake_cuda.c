/*
 * A fake libcuda (driver API) for tests of src/cuda/cuda_driver.cpp, loaded through
 * GPUMGR_CUDA_LIBRARY. One device, PCI bus id 0000:3b:00.0 (as cuDeviceGetByPCIBusId is given
 * it after normalisation), 16 GiB of which 1 GiB is free. Its primary context starts inactive;
 * tests switch it with the exported fake_cuda_set_active() (dlopen RTLD_NOLOAD + dlsym) and
 * read what the code under test did with fake_cuda_counter(name): "retain", "release",
 * "created" (a retain of an inactive primary context: what gpumgr must never cause), "sync",
 * "depth" (the current context stack depth, 0 when balanced).
 */
#include <stddef.h>
#include <string.h>

#define FAKE_EXPORT __attribute__((visibility("default")))

typedef int CUresult;
typedef int CUdevice;
typedef void* CUcontext;

enum {
  CUDA_SUCCESS = 0,
  CUDA_ERROR_INVALID_VALUE = 1,
  CUDA_ERROR_NOT_INITIALIZED = 3,
  CUDA_ERROR_INVALID_DEVICE = 101,
  CUDA_ERROR_INVALID_CONTEXT = 201
};

static int initialised, active, retains, releases, created, syncs, depth;
static int context_storage;

FAKE_EXPORT void fake_cuda_set_active(int value) { active = value; }
FAKE_EXPORT int fake_cuda_counter(const char* name) {
  if (strcmp(name, "retain") == 0) return retains;
  if (strcmp(name, "release") == 0) return releases;
  if (strcmp(name, "created") == 0) return created;
  if (strcmp(name, "sync") == 0) return syncs;
  if (strcmp(name, "depth") == 0) return depth;
  return -1;
}

FAKE_EXPORT CUresult cuInit(unsigned flags) {
  if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
  initialised = 1;
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuGetErrorString(CUresult error, const char** text) {
  switch (error) {
    case CUDA_SUCCESS:
      *text = "no error";
      break;
    case CUDA_ERROR_INVALID_DEVICE:
      *text = "invalid device ordinal";
      break;
    case CUDA_ERROR_INVALID_CONTEXT:
      *text = "invalid device context";
      break;
    default:
      *text = "unknown error";
      break;
  }
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuDeviceGetByPCIBusId(CUdevice* device, const char* bus_id) {
  if (!initialised) return CUDA_ERROR_NOT_INITIALIZED;
  if (strcmp(bus_id, "0000:3b:00.0") != 0) return CUDA_ERROR_INVALID_DEVICE;
  *device = 0;
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuDevicePrimaryCtxGetState(CUdevice device, unsigned* flags, int* is_active) {
  if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
  *flags = 0;
  *is_active = active;
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice device) {
  if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
  if (!active) ++created;
  active = 1;
  ++retains;
  *ctx = &context_storage;
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice device) {
  if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
  ++releases;
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuCtxPushCurrent_v2(CUcontext ctx) {
  if (ctx != &context_storage) return CUDA_ERROR_INVALID_CONTEXT;
  ++depth;
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuCtxPopCurrent_v2(CUcontext* ctx) {
  if (depth == 0) return CUDA_ERROR_INVALID_CONTEXT;
  --depth;
  if (ctx != NULL) *ctx = &context_storage;
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuCtxSynchronize(void) {
  if (depth == 0) return CUDA_ERROR_INVALID_CONTEXT;
  ++syncs;
  return CUDA_SUCCESS;
}
FAKE_EXPORT CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total_bytes) {
  if (depth == 0) return CUDA_ERROR_INVALID_CONTEXT;
  *free_bytes = (size_t)1 << 30;
  *total_bytes = (size_t)16 << 30;
  return CUDA_SUCCESS;
}
