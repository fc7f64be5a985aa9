/*
 * A fake libnvidia-ml for tests: exports the NVML entry points gpumgr calls and answers from a
 * scenario file, so tests exercise the real dlopen/dlsym path (GPUMGR_NVML_LIBRARY=<this .so>).
 *
 * Scenario: the file named by GPUMGR_FAKE_NVML_SCENARIO, read at every nvmlInit/nvmlInit_v2
 * and again when a test calls the exported fake_nvml_reload() (reach it with
 * dlopen(path, RTLD_NOW | RTLD_NOLOAD) + dlsym while the backend holds the library). One
 * setting per line, "key value..."; '#' starts a comment. Global keys:
 *   driver_version 550.54.15        nvml_version 12.550.54.15     cuda_version 12040
 *   init_error N                    nvmlInit returns NVML error N
 *   count_error N                   nvmlDeviceGetCount returns N
 *   memory_v2_mismatch 1            _v2 memory answers NVML_ERROR_ARGUMENT_VERSION_MISMATCH
 *   process_v3_stride 32            _v3 writes 32-byte records (early R535 drivers)
 * "device" starts a new GPU; the keys after it describe that GPU:
 *   uuid GPU-...   name NVIDIA H100 80GB HBM3   bus_id 00000000:3B:00.0
 *   memory_total_mib N   memory_used_mib N   memory_reserved_mib N
 *   utilization GPU MEM   temperature C   power_usage_mw N   power_limit_mw N
 *   compute_capability MAJOR MINOR
 *   process PID MIB|na              a compute process ("na": NVML_VALUE_NOT_AVAILABLE)
 *   graphics_process PID MIB|na
 *   error CALL N                    CALL answers NVML error N; CALL is one of handle uuid
 *                                   name pci memory utilization temperature power_usage
 *                                   power_limit compute_capability compute_processes
 *                                   graphics_processes
 * v1 memory: used = memory_used, free = total - used. v2 memory: used = memory_used -
 * reserved (as current drivers report it), free the same as v1.
 *
 * Observers for tests (exported): fake_nvml_last_memory_version() (the version field the last
 * _v2 call saw, 0 if none), fake_nvml_last_process_version() (3, 2 or 1: the last compute
 * process list called), fake_nvml_init_count() (live nvmlInit minus nvmlShutdown).
 *
 * Built three ways from this source: full; -DFAKE_NVML_OLD_DRIVER leaves out the versioned
 * symbols of the last decade (nvmlInit_v2, nvmlDeviceGetCount_v2, ..HandleByIndex_v2,
 * ..MemoryInfo_v2, the _v2/_v3 process lists, ..PciInfo_v3, ..CudaDriverVersion_v2), keeping
 * nvmlDeviceGetPciInfo_v2 (2014); -DFAKE_NVML_NO_MEMORY_INFO leaves out both memory calls,
 * a required symbol.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAKE_EXPORT __attribute__((visibility("default")))

typedef int nvmlReturn_t;
enum {
  NVML_SUCCESS = 0,
  NVML_ERROR_UNINITIALIZED = 1,
  NVML_ERROR_INVALID_ARGUMENT = 2,
  NVML_ERROR_NOT_SUPPORTED = 3,
  NVML_ERROR_INSUFFICIENT_SIZE = 7,
  NVML_ERROR_DRIVER_NOT_LOADED = 9,
  NVML_ERROR_GPU_IS_LOST = 15,
  NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
  NVML_ERROR_UNKNOWN = 999
};

enum call {
  CALL_HANDLE,
  CALL_UUID,
  CALL_NAME,
  CALL_PCI,
  CALL_MEMORY,
  CALL_UTILIZATION,
  CALL_TEMPERATURE,
  CALL_POWER_USAGE,
  CALL_POWER_LIMIT,
  CALL_COMPUTE_CAPABILITY,
  CALL_COMPUTE_PROCESSES,
  CALL_GRAPHICS_PROCESSES,
  CALL_COUNT_
};
static const char* const call_names[CALL_COUNT_] = {"handle",
                                                    "uuid",
                                                    "name",
                                                    "pci",
                                                    "memory",
                                                    "utilization",
                                                    "temperature",
                                                    "power_usage",
                                                    "power_limit",
                                                    "compute_capability",
                                                    "compute_processes",
                                                    "graphics_processes"};

#define MAX_DEVICES 16
#define MAX_PROCESSES 64
#define MIB (1024ULL * 1024ULL)

struct fake_process {
  unsigned pid;
  unsigned long long used;
};

struct fake_device {
  char uuid[96];
  char name[96];
  char bus_id[32];
  unsigned long long total, used, reserved;
  unsigned util_gpu, util_mem, temperature, power_mw, limit_mw;
  int cc_major, cc_minor;
  int nproc, ngproc;
  struct fake_process procs[MAX_PROCESSES];
  struct fake_process gprocs[MAX_PROCESSES];
  nvmlReturn_t errors[CALL_COUNT_];
};

/* Handles are pointers into this array, so they stay valid across reloads. */
static struct fake_device devices[MAX_DEVICES];
static int device_count;
static char driver_version[80] = "550.54.15";
static char nvml_version[80] = "12.550.54.15";
static int cuda_version = 12040;
static nvmlReturn_t init_error, count_error;
static int memory_v2_mismatch;
static int process_v3_stride = 24;
static int init_count;
static unsigned last_memory_version;
static int last_process_version;

static unsigned long long parse_mib(const char* text) {
  if (strncmp(text, "na", 2) == 0) return ~0ULL;
  return strtoull(text, NULL, 10) * MIB;
}

static void add_process(struct fake_process* list, int* n, const char* rest) {
  char amount[32] = "";
  unsigned pid = 0;
  if (*n >= MAX_PROCESSES || sscanf(rest, "%u %31s", &pid, amount) != 2) return;
  list[*n].pid = pid;
  list[*n].used = parse_mib(amount);
  ++*n;
}

static void copy_value(char* dst, size_t size, const char* value) {
  snprintf(dst, size, "%s", value);
}

FAKE_EXPORT int fake_nvml_reload(void) {
  const char* path = getenv("GPUMGR_FAKE_NVML_SCENARIO");
  FILE* f;
  char line[512];
  struct fake_device* d = NULL;
  memset(devices, 0, sizeof devices);
  device_count = 0;
  init_error = count_error = 0;
  memory_v2_mismatch = 0;
  process_v3_stride = 24;
  if (path == NULL || (f = fopen(path, "r")) == NULL) return -1;
  while (fgets(line, sizeof line, f) != NULL) {
    char key[64] = "";
    const char* rest;
    char* end = strpbrk(line, "#\r\n");
    if (end != NULL) *end = '\0';
    if (sscanf(line, "%63s", key) != 1) continue;
    rest = strstr(line, key) + strlen(key);
    while (*rest == ' ' || *rest == '\t') ++rest;
    if (strcmp(key, "device") == 0) {
      if (device_count == MAX_DEVICES) break;
      d = &devices[device_count++];
      d->cc_major = 8;
      continue;
    }
    if (strcmp(key, "driver_version") == 0)
      copy_value(driver_version, sizeof driver_version, rest);
    else if (strcmp(key, "nvml_version") == 0)
      copy_value(nvml_version, sizeof nvml_version, rest);
    else if (strcmp(key, "cuda_version") == 0)
      cuda_version = atoi(rest);
    else if (strcmp(key, "init_error") == 0)
      init_error = atoi(rest);
    else if (strcmp(key, "count_error") == 0)
      count_error = atoi(rest);
    else if (strcmp(key, "memory_v2_mismatch") == 0)
      memory_v2_mismatch = atoi(rest);
    else if (strcmp(key, "process_v3_stride") == 0)
      process_v3_stride = atoi(rest);
    else if (d == NULL)
      continue;
    else if (strcmp(key, "uuid") == 0)
      copy_value(d->uuid, sizeof d->uuid, rest);
    else if (strcmp(key, "name") == 0)
      copy_value(d->name, sizeof d->name, rest);
    else if (strcmp(key, "bus_id") == 0)
      copy_value(d->bus_id, sizeof d->bus_id, rest);
    else if (strcmp(key, "memory_total_mib") == 0)
      d->total = parse_mib(rest);
    else if (strcmp(key, "memory_used_mib") == 0)
      d->used = parse_mib(rest);
    else if (strcmp(key, "memory_reserved_mib") == 0)
      d->reserved = parse_mib(rest);
    else if (strcmp(key, "utilization") == 0)
      sscanf(rest, "%u %u", &d->util_gpu, &d->util_mem);
    else if (strcmp(key, "temperature") == 0)
      d->temperature = (unsigned)atoi(rest);
    else if (strcmp(key, "power_usage_mw") == 0)
      d->power_mw = (unsigned)atoi(rest);
    else if (strcmp(key, "power_limit_mw") == 0)
      d->limit_mw = (unsigned)atoi(rest);
    else if (strcmp(key, "compute_capability") == 0)
      sscanf(rest, "%d %d", &d->cc_major, &d->cc_minor);
    else if (strcmp(key, "process") == 0)
      add_process(d->procs, &d->nproc, rest);
    else if (strcmp(key, "graphics_process") == 0)
      add_process(d->gprocs, &d->ngproc, rest);
    else if (strcmp(key, "error") == 0) {
      char name[64] = "";
      int code = 0, i;
      if (sscanf(rest, "%63s %d", name, &code) != 2) continue;
      for (i = 0; i < CALL_COUNT_; ++i) {
        if (strcmp(name, call_names[i]) == 0) d->errors[i] = code;
      }
    }
  }
  fclose(f);
  return 0;
}

FAKE_EXPORT unsigned fake_nvml_last_memory_version(void) { return last_memory_version; }
FAKE_EXPORT int fake_nvml_last_process_version(void) { return last_process_version; }
FAKE_EXPORT int fake_nvml_init_count(void) { return init_count; }

/* Validates a handle and applies a scripted error for `c`. */
static nvmlReturn_t check(const void* handle, enum call c, struct fake_device** out) {
  const struct fake_device* d = handle;
  if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
  if (d < devices || d >= devices + device_count) return NVML_ERROR_INVALID_ARGUMENT;
  if (d->errors[c] != 0) return d->errors[c];
  *out = (struct fake_device*)d;
  return NVML_SUCCESS;
}

static nvmlReturn_t copy_string(char* dst, unsigned length, const char* src) {
  if (dst == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  if (strlen(src) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
  memcpy(dst, src, strlen(src) + 1);
  return NVML_SUCCESS;
}

static nvmlReturn_t do_init(void) {
  if (init_count == 0) fake_nvml_reload();
  if (init_error != 0) return init_error;
  ++init_count;
  return NVML_SUCCESS;
}
FAKE_EXPORT nvmlReturn_t nvmlInit(void) { return do_init(); }
FAKE_EXPORT nvmlReturn_t nvmlShutdown(void) {
  if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
  --init_count;
  return NVML_SUCCESS;
}

FAKE_EXPORT const char* nvmlErrorString(nvmlReturn_t r) {
  switch (r) {
    case NVML_SUCCESS:
      return "Success";
    case NVML_ERROR_UNINITIALIZED:
      return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT:
      return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED:
      return "Not Supported";
    case NVML_ERROR_INSUFFICIENT_SIZE:
      return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED:
      return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST:
      return "GPU is lost";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH:
      return "Argument version mismatch";
    case NVML_ERROR_UNKNOWN:
      return "Unknown Error";
    default:
      return "Unknown Error";
  }
}

static nvmlReturn_t get_count(unsigned* count) {
  if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
  if (count_error != 0) return count_error;
  if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  *count = (unsigned)device_count;
  return NVML_SUCCESS;
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned* count) { return get_count(count); }

static nvmlReturn_t get_handle(unsigned index, void** handle) {
  if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
  if (handle == NULL || index >= (unsigned)device_count) return NVML_ERROR_INVALID_ARGUMENT;
  if (devices[index].errors[CALL_HANDLE] != 0) return devices[index].errors[CALL_HANDLE];
  *handle = &devices[index];
  return NVML_SUCCESS;
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned index, void** handle) {
  return get_handle(index, handle);
}

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetUUID(void* h, char* out, unsigned length) {
  struct fake_device* d;
  nvmlReturn_t r = check(h, CALL_UUID, &d);
  return r != NVML_SUCCESS ? r : copy_string(out, length, d->uuid);
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetName(void* h, char* out, unsigned length) {
  struct fake_device* d;
  nvmlReturn_t r = check(h, CALL_NAME, &d);
  return r != NVML_SUCCESS ? r : copy_string(out, length, d->name);
}

struct pci_info { /* nvmlPciInfo_t as taken by _v2 and _v3 */
  char busIdLegacy[16];
  unsigned domain, bus, device, pciDeviceId, pciSubSystemId;
  char busId[32];
};
static nvmlReturn_t get_pci(void* h, struct pci_info* pci) {
  struct fake_device* d;
  nvmlReturn_t r = check(h, CALL_PCI, &d);
  if (r != NVML_SUCCESS) return r;
  memset(pci, 0, sizeof *pci);
  copy_value(pci->busId, sizeof pci->busId, d->bus_id);
  sscanf(d->bus_id, "%x:%x:%x", &pci->domain, &pci->bus, &pci->device);
  return NVML_SUCCESS;
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v2(void* h, struct pci_info* pci) {
  return get_pci(h, pci);
}

#ifndef FAKE_NVML_NO_MEMORY_INFO
struct memory_v1 {
  unsigned long long total, free, used;
};
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(void* h, struct memory_v1* m) {
  struct fake_device* d;
  nvmlReturn_t r = check(h, CALL_MEMORY, &d);
  if (r != NVML_SUCCESS) return r;
  m->total = d->total;
  m->used = d->used;
  m->free = d->total - d->used;
  return NVML_SUCCESS;
}
#endif

struct utilization {
  unsigned gpu, memory;
};
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(void* h, struct utilization* u) {
  struct fake_device* d;
  nvmlReturn_t r = check(h, CALL_UTILIZATION, &d);
  if (r != NVML_SUCCESS) return r;
  u->gpu = d->util_gpu;
  u->memory = d->util_mem;
  return NVML_SUCCESS;
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetTemperature(void* h, int sensor, unsigned* t) {
  struct fake_device* d;
  nvmlReturn_t r = check(h, CALL_TEMPERATURE, &d);
  if (r != NVML_SUCCESS) return r;
  if (sensor != 0) return NVML_ERROR_INVALID_ARGUMENT;
  *t = d->temperature;
  return NVML_SUCCESS;
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetPowerUsage(void* h, unsigned* mw) {
  struct fake_device* d;
  nvmlReturn_t r = check(h, CALL_POWER_USAGE, &d);
  if (r != NVML_SUCCESS) return r;
  *mw = d->power_mw;
  return NVML_SUCCESS;
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(void* h, unsigned* mw) {
  struct fake_device* d;
  nvmlReturn_t r = check(h, CALL_POWER_LIMIT, &d);
  if (r != NVML_SUCCESS) return r;
  *mw = d->limit_mw;
  return NVML_SUCCESS;
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetCudaComputeCapability(void* h, int* major, int* minor) {
  struct fake_device* d;
  nvmlReturn_t r = check(h, CALL_COMPUTE_CAPABILITY, &d);
  if (r != NVML_SUCCESS) return r;
  *major = d->cc_major;
  *minor = d->cc_minor;
  return NVML_SUCCESS;
}

/* Writes `n` records of `stride` bytes: pid at offset 0, usedGpuMemory at offset 8, the rest
 * (instance ids, protected memory) zero, as NVML does without MIG. */
static nvmlReturn_t write_processes(const struct fake_process* list, int n, unsigned* count,
                                    void* infos, size_t stride) {
  int i;
  if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
  if (*count < (unsigned)n) {
    *count = (unsigned)n;
    return NVML_ERROR_INSUFFICIENT_SIZE;
  }
  for (i = 0; i < n; ++i) {
    unsigned char* record = (unsigned char*)infos + (size_t)i * stride;
    memset(record, 0, stride);
    memcpy(record, &list[i].pid, sizeof list[i].pid);
    memcpy(record + 8, &list[i].used, sizeof list[i].used);
  }
  *count = (unsigned)n;
  return NVML_SUCCESS;
}
static nvmlReturn_t processes(void* h, enum call c, unsigned* count, void* infos, int version) {
  struct fake_device* d;
  nvmlReturn_t r = check(h, c, &d);
  size_t stride = version == 1 ? 16 : version == 2 ? 24 : (size_t)process_v3_stride;
  if (c == CALL_COMPUTE_PROCESSES) last_process_version = version;
  if (r != NVML_SUCCESS) return r;
  if (c == CALL_COMPUTE_PROCESSES) return write_processes(d->procs, d->nproc, count, infos, stride);
  return write_processes(d->gprocs, d->ngproc, count, infos, stride);
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(void* h, unsigned* n, void* p) {
  return processes(h, CALL_COMPUTE_PROCESSES, n, p, 1);
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses(void* h, unsigned* n, void* p) {
  return processes(h, CALL_GRAPHICS_PROCESSES, n, p, 1);
}

static nvmlReturn_t system_string(char* out, unsigned length, const char* value) {
  if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
  return copy_string(out, length, value);
}
FAKE_EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char* out, unsigned length) {
  return system_string(out, length, driver_version);
}
FAKE_EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char* out, unsigned length) {
  return system_string(out, length, nvml_version);
}
FAKE_EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int* version) {
  if (init_count == 0) return NVML_ERROR_UNINITIALIZED;
  *version = cuda_version;
  return NVML_SUCCESS;
}

#ifndef FAKE_NVML_OLD_DRIVER
/* The versioned entry points a current driver exports. */
FAKE_EXPORT nvmlReturn_t nvmlInit_v2(void) { return do_init(); }
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned* count) { return get_count(count); }
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned index, void** handle) {
  return get_handle(index, handle);
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(void* h, struct pci_info* pci) {
  return get_pci(h, pci);
}
FAKE_EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int* version) {
  return nvmlSystemGetCudaDriverVersion(version);
}

#ifndef FAKE_NVML_NO_MEMORY_INFO
struct memory_v2 {
  unsigned version;
  unsigned long long total, reserved, free, used;
};
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(void* h, struct memory_v2* m) {
  struct fake_device* d;
  nvmlReturn_t r = check(h, CALL_MEMORY, &d);
  if (r != NVML_SUCCESS) return r;
  last_memory_version = m->version;
  /* NVML_STRUCT_VERSION(Memory, 2) */
  if (memory_v2_mismatch || m->version != ((unsigned)sizeof(struct memory_v2) | (2u << 24))) {
    return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
  }
  m->total = d->total;
  m->reserved = d->reserved;
  m->used = d->used - d->reserved;
  m->free = d->total - d->used;
  return NVML_SUCCESS;
}
#endif

FAKE_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(void* h, unsigned* n, void* p) {
  return processes(h, CALL_COMPUTE_PROCESSES, n, p, 2);
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(void* h, unsigned* n, void* p) {
  return processes(h, CALL_COMPUTE_PROCESSES, n, p, 3);
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v2(void* h, unsigned* n, void* p) {
  return processes(h, CALL_GRAPHICS_PROCESSES, n, p, 2);
}
FAKE_EXPORT nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses_v3(void* h, unsigned* n, void* p) {
  return processes(h, CALL_GRAPHICS_PROCESSES, n, p, 3);
}
#endif
