// Resolves a device selector ("auto", "cuda", "cuda:N", "cpu") to a backend.
#include <cstdlib>

#include "gpumgr/backends.h"

namespace gpumgr {

std::string_view device_kind_name(DeviceKind kind) {
  switch (kind) {
    case DeviceKind::kGpu:
      return "gpu";
    case DeviceKind::kSimulated:
      return "simulated";
    case DeviceKind::kCpu:
      return "cpu";
  }
  return "gpu";
}

StatusOr<DeviceSelector> parse_device_selector(std::string_view text) {
  const std::string help = ": use auto, cuda, cuda:N or cpu";
  if (text == "auto") return DeviceSelector{DeviceSelector::Kind::kAuto, -1};
  if (text == "cpu") return DeviceSelector{DeviceSelector::Kind::kCpu, -1};
  if (text == "cuda") return DeviceSelector{DeviceSelector::Kind::kCuda, -1};
  if (text.empty()) return InvalidArgument("empty device" + help);
  if (text.rfind("cuda:", 0) == 0) {
    const std::string_view digits = text.substr(5);
    int index = 0;
    bool ok = !digits.empty() && digits.size() <= 4;
    for (const char c : digits) {
      if (c < '0' || c > '9') ok = false;
      index = index * 10 + (c - '0');
    }
    if (!ok) {
      return InvalidArgument("bad device '" + std::string(text) +
                             "': the index after cuda: must be a non-negative integer");
    }
    return DeviceSelector{DeviceSelector::Kind::kCuda, index};
  }
  return InvalidArgument("unknown device '" + std::string(text) + "'" + help);
}

StatusOr<DeviceSelection> open_backend(std::string_view selector, std::string_view simulate) {
  auto parsed = parse_device_selector(selector);
  if (!parsed.ok()) return parsed.status();
  const DeviceSelector sel = parsed.value();
  DeviceSelection out;
  if (sel.kind == DeviceSelector::Kind::kCpu) {
    out.backend = make_cpu_backend();
    out.note = "cpu: host memory";
    return out;
  }

  std::string spec(simulate);
  if (spec.empty()) {
    if (const char* env = std::getenv("GPUMGR_SIMULATE"); env != nullptr) spec = env;
  }
  std::shared_ptr<DeviceBackend> gpus;
  std::string why_no_gpu;
  int device_count = 0;
  if (!spec.empty()) {
    auto sim = SimulatedBackend::from_spec(spec);
    if (!sim.ok()) return sim.status();
    device_count = sim.value()->device_count();
    out.note = "simulated devices " + spec;
    if (const char* file = std::getenv("GPUMGR_SIMULATE_PROCESSES");
        file != nullptr && *file != '\0') {
      if (Status s = sim.value()->set_processes_file(file); !s.ok()) {
        return Status(s.code(), "GPUMGR_SIMULATE_PROCESSES: " + s.message());
      }
      out.note += ", processes from " + std::string(file);
    }
    gpus = std::move(sim).value();
  } else {
    auto nvml = make_nvml_backend();
    if (nvml.ok()) {
      auto devices = nvml.value()->query();
      if (devices.ok()) device_count = static_cast<int>(devices->size());
      gpus = std::move(nvml).value();
      out.note = "NVML GPUs";
    } else {
      why_no_gpu = nvml.status().message();
    }
  }

  if (!gpus) {
    if (sel.kind == DeviceSelector::Kind::kAuto) {
      out.backend = make_cpu_backend();
      out.note = "auto: no usable GPU (" + why_no_gpu + "); using the CPU";
      return out;
    }
    return Unavailable("device '" + std::string(selector) +
                       "' asked for a GPU but none is usable: " + why_no_gpu);
  }
  if (sel.index >= device_count) {
    return NotFound(
        "device '" + std::string(selector) + "' does not exist: there " +
        (device_count == 1 ? "is 1 GPU" : "are " + std::to_string(device_count) + " GPUs") +
        " (cuda:0.." + "cuda:" + std::to_string(device_count - 1) + ")");
  }
  out.backend = std::move(gpus);
  out.pinned_device = sel.index;
  return out;
}

}  // namespace gpumgr
