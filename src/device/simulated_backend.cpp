#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>

#include "gpumgr/backends.h"
#include "gpumgr/units.h"
#include "util/small_file.h"

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

namespace {

constexpr std::size_t kMaxProcessesFileBytes = std::size_t{1} << 20;

std::uint64_t saturating_add(std::uint64_t a, std::uint64_t b) {
  return a > std::numeric_limits<std::uint64_t>::max() - b
             ? std::numeric_limits<std::uint64_t>::max()
             : a + b;
}

// A decimal integer of at most 10 digits (pids and device indices); nullopt otherwise.
std::optional<std::uint64_t> parse_small_uint(std::string_view text) {
  if (text.empty() || text.size() > 10) return std::nullopt;
  std::uint64_t v = 0;
  for (const char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return v;
}

}  // namespace

SimulatedBackend::ProcessesFile SimulatedBackend::read_processes_file(const std::string& path,
                                                                      std::size_t device_count) {
  ProcessesFile out;
  out.devices.resize(device_count);
  const std::string where = "processes file " + path;
  // O_NONBLOCK: a FIFO must not hang the poller; it is refused below as not a regular file.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    if (errno != ENOENT) out.error = "cannot read " + where + ": " + std::strerror(errno);
    return out;  // missing: no scripted processes
  }
  struct stat st {};
  std::optional<std::string> text;
  if (::fstat(fd, &st) != 0) {
    out.error = "cannot read " + where + ": " + std::strerror(errno);
  } else if (!S_ISREG(st.st_mode)) {
    out.error = "cannot read " + where + ": not a regular file";
  } else {
    text = read_open_file(fd, kMaxProcessesFileBytes + 1);
    if (!text) out.error = "cannot read " + where;
  }
  ::close(fd);
  if (!out.error.empty()) return out;
  if (text->size() > kMaxProcessesFileBytes) {
    out.error = where + " is larger than 1 MiB";
    return out;
  }

  const std::string expected = " (expected DEVICE PID SIZE, e.g. '0 4242 6GiB')";
  // Where each device+pid was first listed, to refuse a second line for it.
  std::vector<std::vector<std::pair<std::uint32_t, std::size_t>>> seen(device_count);
  std::size_t line_no = 0;
  std::size_t start = 0;
  while (start < text->size()) {
    ++line_no;
    std::size_t end = text->find('\n', start);
    if (end == std::string::npos) end = text->size();
    std::string_view line = std::string_view(*text).substr(start, end - start);
    start = end + 1;
    if (const std::size_t hash = line.find('#'); hash != std::string_view::npos) {
      line = line.substr(0, hash);
    }
    std::vector<std::string_view> fields;
    for (std::size_t i = 0; i < line.size();) {
      const auto space = [](char c) { return c == ' ' || c == '\t' || c == '\r'; };
      while (i < line.size() && space(line[i])) ++i;
      const std::size_t field_start = i;
      while (i < line.size() && !space(line[i])) ++i;
      if (i > field_start) fields.push_back(line.substr(field_start, i - field_start));
    }
    if (fields.empty()) continue;
    const std::string at = where + ", line " + std::to_string(line_no) + ": ";
    if (fields.size() < 3) {
      static constexpr const char* kNames[] = {"PID", "SIZE"};
      out.error = at + "missing field " + kNames[fields.size() - 1] + expected;
      return out;
    }
    if (fields.size() > 3) {
      out.error = at + "extra field '" + std::string(fields[3]) + "'" + expected;
      return out;
    }
    const auto device = parse_small_uint(fields[0]);
    if (!device) {
      out.error = at + "device '" + std::string(fields[0]) + "' is not a device index" + expected;
      return out;
    }
    if (*device >= device_count) {
      out.error =
          at + "device " + std::to_string(*device) + " does not exist (there " +
          (device_count == 1 ? "is 1 simulated device, 0"
                             : "are " + std::to_string(device_count) + " simulated devices, 0.." +
                                   std::to_string(device_count - 1)) +
          ")";
      return out;
    }
    const auto pid = parse_small_uint(fields[1]);
    if (!pid || *pid == 0 || *pid > std::numeric_limits<std::uint32_t>::max()) {
      out.error = at + "pid '" + std::string(fields[1]) + "' is not a positive integer" + expected;
      return out;
    }
    auto size = parse_size(fields[2]);
    if (!size.ok()) {
      out.error = at + size.status().message();
      return out;
    }
    const auto d = static_cast<std::size_t>(*device);
    const auto p = static_cast<std::uint32_t>(*pid);
    for (const auto& [seen_pid, seen_line] : seen[d]) {
      if (seen_pid == p) {
        out.error = at + "device " + std::to_string(d) + " pid " + std::to_string(p) +
                    " is already listed on line " + std::to_string(seen_line) +
                    " (one line per device and pid)";
        return out;
      }
    }
    seen[d].emplace_back(p, line_no);
    if (*size > 0) out.devices[d].push_back(ProcessUsage{p, *size});
  }
  return out;
}

Status SimulatedBackend::apply_processes_file(ProcessesFile file, bool print) {
  processes_error_ = file.error;
  if (file.error.empty()) {
    scripted_ = std::move(file.devices);
    reported_error_.clear();
    return Status::Ok();
  }
  if (file.error != reported_error_) {
    if (print)
      std::fprintf(stderr, "gpumgr: %s; keeping its previous contents\n", file.error.c_str());
    reported_error_ = file.error;
  }
  return InvalidArgument(file.error);
}

Status SimulatedBackend::set_processes_file(std::string path) {
  std::size_t count = 0;
  {
    std::lock_guard lock(mutex_);
    count = devices_.size();
  }
  ProcessesFile file;
  if (!path.empty()) file = read_processes_file(path, count);
  std::lock_guard lock(mutex_);
  processes_path_ = std::move(path);
  scripted_.clear();
  if (processes_path_.empty()) {
    processes_error_.clear();
    reported_error_.clear();
    return Status::Ok();
  }
  // The caller gets this first error as the result: it is not printed as well.
  return apply_processes_file(std::move(file), /*print=*/false);
}

std::string SimulatedBackend::processes_file_error() const {
  std::lock_guard lock(mutex_);
  return processes_error_;
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
  // The file is read outside the lock.
  std::string path;
  std::size_t count = 0;
  {
    std::lock_guard lock(mutex_);
    path = processes_path_;
    count = devices_.size();
  }
  std::optional<ProcessesFile> file;
  if (!path.empty()) file = read_processes_file(path, count);
  std::lock_guard lock(mutex_);
  ++queries_;
  // A file set or cleared meanwhile wins over this read of the old one.
  if (file && path == processes_path_) (void)apply_processes_file(std::move(*file), true);
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
    if (i < scripted_.size()) {
      for (const ProcessUsage& s : scripted_[i]) {
        auto same = std::find_if(info.processes.begin(), info.processes.end(),
                                 [&](const ProcessUsage& p) { return p.pid == s.pid; });
        if (same != info.processes.end()) {
          same->used_bytes = saturating_add(same->used_bytes, s.used_bytes);
        } else {
          info.processes.push_back(s);
        }
      }
    }
    if (d.foreign > 0) info.processes.push_back(ProcessUsage{0, d.foreign});
    std::uint64_t used = 0;
    for (const auto& p : info.processes) used = saturating_add(used, p.used_bytes);
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
