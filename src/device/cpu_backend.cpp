// The CPU device: host memory as one pool, so that CPU fallback still has admission control.
//
// /proc files are read with read_small_file and parsed with std::from_chars, not iostreams
// (util/small_file.h says why).
#include <charconv>
#include <optional>
#include <string_view>

#include "gpumgr/backends.h"
#include "util/small_file.h"

namespace gpumgr {
namespace {

// The number after "KEY:" on its own line ("MemTotal:       24575788 kB"), in kB.
std::optional<std::uint64_t> meminfo_field(std::string_view text, std::string_view key) {
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t end = std::min(text.find('\n', pos), text.size());
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    if (line.size() <= key.size() || line.substr(0, key.size()) != key || line[key.size()] != ':') {
      continue;
    }
    line.remove_prefix(key.size() + 1);
    while (!line.empty() && line.front() == ' ') line.remove_prefix(1);
    std::uint64_t value = 0;
    const auto [ptr, ec] = std::from_chars(line.data(), line.data() + line.size(), value);
    if (ec != std::errc() || ptr == line.data()) return std::nullopt;
    return value;
  }
  return std::nullopt;
}

std::string cpu_name() {
  const auto text = read_small_file("/proc/cpuinfo");
  if (!text) return "CPU";
  const std::string_view view(*text);
  const std::size_t at = view.find("model name");
  if (at == std::string_view::npos) return "CPU";
  const std::size_t colon = view.find(':', at);
  const std::size_t end = view.find('\n', at);
  if (colon == std::string_view::npos || colon + 2 > end) return "CPU";
  return std::string(view.substr(colon + 2, end - colon - 2));
}

class CpuBackend final : public DeviceBackend {
 public:
  explicit CpuBackend(std::string meminfo_path)
      : path_(std::move(meminfo_path)), name_(cpu_name()) {}

  BackendInfo info() const override { return BackendInfo{"cpu", "", "", ""}; }

  StatusOr<std::vector<DeviceInfo>> query() override {
    const auto text = read_small_file(path_);
    if (!text) return Unavailable("cannot read " + path_);
    const auto total_kib = meminfo_field(*text, "MemTotal");
    const auto available_kib = meminfo_field(*text, "MemAvailable");
    if (!total_kib || !available_kib || *total_kib == 0) {
      return Unavailable(path_ + " has no MemTotal/MemAvailable lines");
    }
    DeviceInfo d;
    d.index = 0;
    d.kind = DeviceKind::kCpu;
    d.uuid = "CPU";
    d.name = name_;
    d.total_bytes = *total_kib * 1024;
    d.free_bytes = std::min(*available_kib, *total_kib) * 1024;
    d.used_bytes = d.total_bytes - d.free_bytes;
    // Which process uses host memory is not tracked: the used figure counts as outside use,
    // less what this process reports through the framework provider.
    d.processes_known = false;
    return std::vector<DeviceInfo>{d};
  }

 private:
  const std::string path_;
  const std::string name_;
};

}  // namespace

std::shared_ptr<DeviceBackend> make_cpu_backend(std::string meminfo_path) {
  return std::make_shared<CpuBackend>(std::move(meminfo_path));
}

}  // namespace gpumgr
