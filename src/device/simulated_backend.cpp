#include <algorithm>

#include "gpumgr/backends.h"
#include "gpumgr/units.h"

namespace gpumgr {

StatusOr<std::vector<std::uint64_t>> parse_simulate_spec(std::string_view spec) {
  const std::string quoted = "'" + std::string(spec) + "'";
  if (spec.empty()) {
    return InvalidArgument("empty device spec: expected e.g. 2x24GiB or 24GiB,80GiB");
  }
  std::vector<std::uint64_t> sizes;
  std::size_t start = 0;
  while (start <= spec.size()) {
    const std::size_t comma = spec.find(',', start);
    const std::string_view item = spec.substr(
        start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    if (item.empty()) return InvalidArgument("bad device spec " + quoted + ": empty entry");
    std::uint64_t count = 1;
    std::string_view size_text = item;
    if (const std::size_t x = item.find('x'); x != std::string_view::npos) {
      const std::string_view count_text = item.substr(0, x);
      count = 0;
      for (const char c : count_text) {
        if (c < '0' || c > '9' || count > 1000) {
          return InvalidArgument("bad device spec " + quoted + ": '" + std::string(count_text) +
                                 "' is not a device count (expected e.g. 2x24GiB)");
        }
        count = count * 10 + static_cast<std::uint64_t>(c - '0');
      }
      if (count_text.empty() || count == 0 || count > 1024) {
        return InvalidArgument("bad device spec " + quoted +
                               ": the device count must be between 1 and 1024");
      }
      size_text = item.substr(x + 1);
    }
    auto size = parse_size(size_text);
    if (!size.ok())
      return InvalidArgument("bad device spec " + quoted + ": " + size.status().message());
    if (*size == 0)
      return InvalidArgument("bad device spec " + quoted + ": a device cannot have 0 bytes");
    for (std::uint64_t i = 0; i < count; ++i) sizes.push_back(*size);
    if (sizes.size() > 1024)
      return InvalidArgument("bad device spec " + quoted + ": more than 1024 devices");
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return sizes;
}

SimulatedBackend::SimulatedBackend(std::vector<std::uint64_t> sizes) {
  for (const auto size : sizes) devices_.push_back(Device{size, 0, {}, 0, 35, true, {}});
}

StatusOr<std::shared_ptr<SimulatedBackend>> SimulatedBackend::from_spec(std::string_view spec) {
  auto sizes = parse_simulate_spec(spec);
  if (!sizes.ok()) return sizes.status();
  return std::make_shared<SimulatedBackend>(std::move(sizes).value());
}

BackendInfo SimulatedBackend::info() const { return BackendInfo{"simulated", "", "", ""}; }

StatusOr<std::vector<DeviceInfo>> SimulatedBackend::query() {
  std::lock_guard lock(mutex_);
  ++queries_;
  if (failing_) return Unavailable("simulated backend failure");
  std::vector<DeviceInfo> out;
  for (std::size_t i = 0; i < devices_.size(); ++i) {
    const Device& d = devices_[i];
    DeviceInfo info;
    info.index = static_cast<int>(i);
    info.kind = DeviceKind::kSimulated;
    info.uuid = "SIM-" + std::to_string(i);
    info.name = "Simulated GPU (" + format_bytes(d.total) + ")";
    info.total_bytes = d.total;
    // Outside use is reported as pid 0, a pid no lease holder can have.
    info.processes_known = true;
    info.processes = d.processes;
    if (d.foreign > 0) info.processes.push_back(ProcessUsage{0, d.foreign});
    std::uint64_t used = 0;
    for (const auto& p : info.processes) used += p.used_bytes;
    info.used_bytes = std::min(used, d.total);
    info.free_bytes = d.total - info.used_bytes;
    info.gpu_utilization_percent = d.utilization;
    info.memory_utilization_percent = d.utilization;
    info.temperature_c = d.temperature;
    info.healthy = d.healthy;
    info.health_reason = d.reason;
    out.push_back(std::move(info));
  }
  return out;
}

int SimulatedBackend::device_count() const {
  std::lock_guard lock(mutex_);
  return static_cast<int>(devices_.size());
}

Status SimulatedBackend::check_index(int device) const {
  if (device < 0 || static_cast<std::size_t>(device) >= devices_.size()) {
    return NotFound("simulated device " + std::to_string(device) + " does not exist");
  }
  return Status::Ok();
}

Status SimulatedBackend::set_foreign_usage(int device, std::uint64_t bytes) {
  std::lock_guard lock(mutex_);
  if (Status s = check_index(device); !s.ok()) return s;
  devices_[static_cast<std::size_t>(device)].foreign = bytes;
  return Status::Ok();
}

Status SimulatedBackend::set_process_usage(int device, std::uint32_t pid, std::uint64_t bytes) {
  std::lock_guard lock(mutex_);
  if (Status s = check_index(device); !s.ok()) return s;
  if (pid == 0) return InvalidArgument("pid 0 stands for outside use; use set_foreign_usage");
  auto& procs = devices_[static_cast<std::size_t>(device)].processes;
  std::erase_if(procs, [pid](const ProcessUsage& p) { return p.pid == pid; });
  if (bytes > 0) procs.push_back(ProcessUsage{pid, bytes});
  return Status::Ok();
}

Status SimulatedBackend::set_utilization(int device, unsigned gpu_percent) {
  std::lock_guard lock(mutex_);
  if (Status s = check_index(device); !s.ok()) return s;
  if (gpu_percent > 100) return InvalidArgument("utilisation must be 0..100");
  devices_[static_cast<std::size_t>(device)].utilization = gpu_percent;
  return Status::Ok();
}

Status SimulatedBackend::set_temperature(int device, unsigned celsius) {
  std::lock_guard lock(mutex_);
  if (Status s = check_index(device); !s.ok()) return s;
  devices_[static_cast<std::size_t>(device)].temperature = celsius;
  return Status::Ok();
}

Status SimulatedBackend::set_healthy(int device, bool healthy, std::string reason) {
  std::lock_guard lock(mutex_);
  if (Status s = check_index(device); !s.ok()) return s;
  auto& d = devices_[static_cast<std::size_t>(device)];
  d.healthy = healthy;
  d.reason = healthy ? std::string() : (reason.empty() ? "simulated failure" : std::move(reason));
  return Status::Ok();
}

void SimulatedBackend::set_backend_failure(bool failing) {
  std::lock_guard lock(mutex_);
  failing_ = failing;
}

std::uint64_t SimulatedBackend::query_count() const {
  std::lock_guard lock(mutex_);
  return queries_;
}

}  // namespace gpumgr
