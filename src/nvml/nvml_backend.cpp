#include "nvml/nvml_backend.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <string>

#include "gpumgr/backends.h"

namespace gpumgr {
namespace {

using nvml::Return;

// Errors that say the library as a whole is not working rather than one GPU.
bool is_library_wide(Return rc) {
  return rc == nvml::kErrorUninitialized || rc == nvml::kErrorDriverNotLoaded ||
         rc == nvml::kErrorLibRmVersionMismatch || rc == nvml::kErrorLibraryNotFound;
}

// Errors that mean "this version of the call does not fit this driver": try an older one.
bool try_older_version(Return rc) {
  return rc == nvml::kErrorFunctionNotFound || rc == nvml::kErrorArgumentVersionMismatch;
}

std::string read_string(nvml::GetStringFn fn, nvml::Device handle, unsigned size, Return* rc) {
  std::string buffer(size, '\0');
  *rc = fn(handle, buffer.data(), size);
  if (*rc != nvml::kSuccess) return {};
  buffer.resize(std::strlen(buffer.c_str()));
  return buffer;
}

std::string read_system_string(nvml::SystemGetStringFn fn) {
  if (fn == nullptr) return {};
  std::array<char, nvml::kVersionBufferSize> buffer{};
  if (fn(buffer.data(), nvml::kVersionBufferSize) != nvml::kSuccess) return {};
  buffer.back() = '\0';
  return buffer.data();
}

// Calls one version of a running-process list with raw storage, growing it while NVML says it
// is too small. `stride` is the record size of that version; with `probe_wide_stride` a
// record that turns out to be 32 bytes (early R535 _v3) is detected and read correctly.
Return call_process_list(nvml::GetProcessesFn fn, nvml::Device handle, std::size_t stride,
                         bool probe_wide_stride, std::vector<ProcessUsage>& out) {
  constexpr std::size_t kWidest = sizeof(nvml::ProcessInfoV3Cc);
  constexpr unsigned char kFill = 0xFF;
  unsigned capacity = 64;
  for (int attempt = 0; attempt < 5; ++attempt) {
    // Sized for the widest record whatever we expect, so a driver writing wider records than
    // declared can never overrun the buffer.
    std::vector<unsigned char> buffer(std::size_t{capacity} * kWidest, kFill);
    unsigned count = capacity;
    const Return rc = fn(handle, &count, buffer.data());
    if (rc == nvml::kErrorInsufficientSize) {
      capacity = std::max(count, capacity) + 16;
      continue;
    }
    if (rc != nvml::kSuccess) return rc;
    count = std::min(count, capacity);
    std::size_t actual = stride;
    if (probe_wide_stride && count > 0) {
      // With `stride`-sized records, nothing past count*stride is written.
      const auto begin = buffer.begin() + static_cast<std::ptrdiff_t>(count * stride);
      const auto end = buffer.begin() + static_cast<std::ptrdiff_t>(count * kWidest);
      if (std::any_of(begin, end, [](unsigned char b) { return b != kFill; })) actual = kWidest;
    }
    out.clear();
    for (unsigned i = 0; i < count; ++i) {
      const unsigned char* record = buffer.data() + i * actual;
      unsigned pid = 0;
      unsigned long long used = 0;
      std::memcpy(&pid, record + offsetof(nvml::ProcessInfoV2, pid), sizeof pid);
      std::memcpy(&used, record + offsetof(nvml::ProcessInfoV2, usedGpuMemory), sizeof used);
      out.push_back({pid, used == nvml::kValueNotAvailable ? 0 : used});
    }
    return nvml::kSuccess;
  }
  return nvml::kErrorInsufficientSize;
}

// The newest available version of a process list (v3, v2, v1) that this driver accepts.
// kErrorFunctionNotFound when the library has none.
Return process_list(nvml::GetProcessesFn v3, nvml::GetProcessesFn v2, nvml::GetProcessesFn v1,
                    nvml::Device handle, std::vector<ProcessUsage>& out) {
  Return rc = nvml::kErrorFunctionNotFound;
  if (v3 != nullptr) {
    rc = call_process_list(v3, handle, sizeof(nvml::ProcessInfoV2), true, out);
    if (!try_older_version(rc)) return rc;
  }
  if (v2 != nullptr) {
    rc = call_process_list(v2, handle, sizeof(nvml::ProcessInfoV2), false, out);
    if (!try_older_version(rc)) return rc;
  }
  if (v1 != nullptr) rc = call_process_list(v1, handle, sizeof(nvml::ProcessInfoV1), false, out);
  return rc;
}

// Drops what is only meaningful while a device answers.
void clear_live_fields(DeviceInfo& d) {
  d.gpu_utilization_percent.reset();
  d.memory_utilization_percent.reset();
  d.temperature_c.reset();
  d.power_draw_w.reset();
  d.processes_known = false;
  d.processes.clear();
}

}  // namespace

std::string format_cuda_version(int version) {
  if (version <= 0) return {};
  return std::to_string(version / 1000) + "." + std::to_string((version % 1000) / 10);
}

std::optional<std::uint64_t> process_used_bytes(const DeviceInfo& device, std::uint32_t pid) {
  if (!device.processes_known) return std::nullopt;
  std::uint64_t total = 0;
  for (const ProcessUsage& p : device.processes) {
    if (p.pid == pid) total += p.used_bytes;
  }
  return total;
}

NvmlBackend::NvmlBackend(std::unique_ptr<nvml::NvmlLibrary> lib) : lib_(std::move(lib)) {}

StatusOr<std::shared_ptr<NvmlBackend>> NvmlBackend::create(std::unique_ptr<nvml::NvmlLibrary> lib) {
  const nvml::Api& api = lib->api();
  unsigned count = 0;
  const Return rc = api.device_count(&count);
  if (rc != nvml::kSuccess) {
    return Unavailable("NVML unavailable: nvmlDeviceGetCount failed: " + lib->error_text(rc));
  }
  if (count == 0) return Unavailable("NVML reports no GPUs (" + lib->path() + ")");

  std::shared_ptr<NvmlBackend> backend(new NvmlBackend(std::move(lib)));
  BackendInfo& info = backend->info_;
  info.name = "nvml";
  info.driver_version = read_system_string(api.driver_version);
  info.nvml_version = read_system_string(api.nvml_version);
  int cuda = 0;
  if (api.cuda_driver_version != nullptr && api.cuda_driver_version(&cuda) == nvml::kSuccess) {
    info.cuda_driver_version = format_cuda_version(cuda);
  }
  {
    MutexLock lock(backend->mutex_);
    backend->slots_.resize(count);
    for (unsigned i = 0; i < count; ++i) {
      Slot& slot = backend->slots_[i];
      slot.last.index = static_cast<int>(i);
      slot.last.kind = DeviceKind::kGpu;
      // A device that fails here is listed unhealthy and retried at every query.
      backend->refresh(slot, i);
    }
  }
  return backend;
}

StatusOr<std::vector<DeviceInfo>> NvmlBackend::query() {
  MutexLock lock(mutex_);
  std::vector<DeviceInfo> out;
  out.reserve(slots_.size());
  std::size_t library_failures = 0;
  for (unsigned i = 0; i < slots_.size(); ++i) {
    if (is_library_wide(refresh(slots_[i], i))) ++library_failures;
    out.push_back(slots_[i].last);
  }
  if (!slots_.empty() && library_failures == slots_.size()) {
    return Unavailable("NVML failed on every device: " + out.front().health_reason);
  }
  return out;
}

Return NvmlBackend::refresh(Slot& slot, unsigned index) {
  const nvml::Api& api = lib_->api();
  DeviceInfo& d = slot.last;
  auto fail = [&](const char* what, Return rc) {
    d.healthy = false;
    d.health_reason = std::string(what) + ": " + lib_->error_text(rc);
    clear_live_fields(d);
    return rc;
  };

  if (slot.handle == nullptr) {
    nvml::Device handle = nullptr;
    const Return rc = api.handle(index, &handle);
    if (rc != nvml::kSuccess) return fail("cannot get the device handle", rc);
    slot.handle = handle;
  }
  if (const Return rc = read_memory(slot.handle, d); rc != nvml::kSuccess) {
    return fail("memory query failed", rc);
  }
  if (!slot.identity_known) read_identity(slot);

  Return rc = nvml::kSuccess;
  if (api.utilization != nullptr) {
    nvml::Utilization u{};
    rc = api.utilization(slot.handle, &u);
    d.gpu_utilization_percent =
        rc == nvml::kSuccess ? std::optional<unsigned>(u.gpu) : std::nullopt;
    d.memory_utilization_percent =
        rc == nvml::kSuccess ? std::optional<unsigned>(u.memory) : std::nullopt;
  }
  if (api.temperature != nullptr) {
    unsigned celsius = 0;
    rc = api.temperature(slot.handle, nvml::kTemperatureGpu, &celsius);
    d.temperature_c = rc == nvml::kSuccess ? std::optional<unsigned>(celsius) : std::nullopt;
  }
  // NVML reports power in milliwatts.
  if (api.power_usage != nullptr) {
    unsigned mw = 0;
    rc = api.power_usage(slot.handle, &mw);
    d.power_draw_w = rc == nvml::kSuccess ? std::optional<double>(mw / 1000.0) : std::nullopt;
  }
  if (api.power_limit != nullptr) {
    unsigned mw = 0;
    rc = api.power_limit(slot.handle, &mw);
    d.power_limit_w = rc == nvml::kSuccess ? std::optional<double>(mw / 1000.0) : std::nullopt;
  }
  read_processes(slot.handle, d);
  d.healthy = true;
  d.health_reason.clear();
  return nvml::kSuccess;
}

Return NvmlBackend::read_memory(nvml::Device handle, DeviceInfo& out) {
  const nvml::Api& api = lib_->api();
  if (api.memory_v2 != nullptr && memory_v2_usable_) {
    nvml::MemoryV2 m{};
    m.version = nvml::kMemoryV2Version;
    const Return rc = api.memory_v2(handle, &m);
    if (rc == nvml::kSuccess) {
      out.total_bytes = m.total;
      out.used_bytes = m.used;
      out.free_bytes = m.free;
      return rc;
    }
    if (!try_older_version(rc)) return rc;
    memory_v2_usable_ = false;
  }
  nvml::Memory m{};
  const Return rc = api.memory_v1(handle, &m);
  if (rc == nvml::kSuccess) {
    out.total_bytes = m.total;
    out.used_bytes = m.used;
    out.free_bytes = m.free;
  }
  return rc;
}

void NvmlBackend::read_identity(Slot& slot) const {
  const nvml::Api& api = lib_->api();
  DeviceInfo& d = slot.last;
  Return uuid_rc = nvml::kSuccess;
  Return name_rc = nvml::kSuccess;
  std::string uuid = read_string(api.uuid, slot.handle, nvml::kUuidBufferSize, &uuid_rc);
  std::string name = read_string(api.name, slot.handle, nvml::kNameBufferSize, &name_rc);
  if (uuid_rc == nvml::kSuccess) d.uuid = std::move(uuid);
  if (name_rc == nvml::kSuccess) d.name = std::move(name);
  if (api.pci_info != nullptr) {
    nvml::PciInfo pci{};
    if (api.pci_info(slot.handle, &pci) == nvml::kSuccess) {
      pci.busId[sizeof pci.busId - 1] = '\0';
      d.pci_bus_id = pci.busId;
    }
  }
  if (api.compute_capability != nullptr) {
    int major = 0;
    int minor = 0;
    if (api.compute_capability(slot.handle, &major, &minor) == nvml::kSuccess) {
      d.compute_capability_major = major;
      d.compute_capability_minor = minor;
    }
  }
  // Retried at the next query until both are known.
  slot.identity_known = uuid_rc == nvml::kSuccess && name_rc == nvml::kSuccess;
}

void NvmlBackend::read_processes(nvml::Device handle, DeviceInfo& out) const {
  const nvml::Api& api = lib_->api();
  std::vector<ProcessUsage> compute;
  const Return rc = process_list(api.compute_processes_v3, api.compute_processes_v2,
                                 api.compute_processes_v1, handle, compute);
  out.processes.clear();
  out.processes_known = rc == nvml::kSuccess;
  if (!out.processes_known) return;
  out.processes = std::move(compute);
  // Graphics contexts (Xorg, a desktop session) hold device memory too. A process with both
  // kinds of context appears in both lists with the same figure, so keep the larger, once.
  std::vector<ProcessUsage> graphics;
  if (process_list(api.graphics_processes_v3, api.graphics_processes_v2, api.graphics_processes_v1,
                   handle, graphics) == nvml::kSuccess) {
    for (const ProcessUsage& g : graphics) {
      auto it = std::find_if(out.processes.begin(), out.processes.end(),
                             [&](const ProcessUsage& p) { return p.pid == g.pid; });
      if (it == out.processes.end()) {
        out.processes.push_back(g);
      } else {
        it->used_bytes = std::max(it->used_bytes, g.used_bytes);
      }
    }
  }
}

StatusOr<std::shared_ptr<DeviceBackend>> make_nvml_backend() {
  auto lib = nvml::NvmlLibrary::open();
  if (!lib.ok()) return lib.status();
  auto backend = NvmlBackend::create(std::move(lib).value());
  if (!backend.ok()) return backend.status();
  return std::shared_ptr<DeviceBackend>(std::move(backend).value());
}

}  // namespace gpumgr
