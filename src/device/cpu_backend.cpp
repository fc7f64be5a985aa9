// The CPU device: host memory as one pool, so that CPU fallback still has admission control.
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "gpumgr/backends.h"

namespace gpumgr {
namespace {

class CpuBackend final : public DeviceBackend {
 public:
  explicit CpuBackend(std::string meminfo_path) : path_(std::move(meminfo_path)) {}

  BackendInfo info() const override { return BackendInfo{"cpu", "", "", ""}; }

  StatusOr<std::vector<DeviceInfo>> query() override {
    std::ifstream in(path_);
    if (!in) return Unavailable("cannot read " + path_);
    std::uint64_t total_kib = 0;
    std::uint64_t available_kib = 0;
    bool have_total = false;
    bool have_available = false;
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string key;
      std::uint64_t value = 0;
      if (!(fields >> key >> value)) continue;
      if (key == "MemTotal:") {
        total_kib = value;
        have_total = true;
      } else if (key == "MemAvailable:") {
        available_kib = value;
        have_available = true;
      }
    }
    if (!have_total || !have_available || total_kib == 0) {
      return Unavailable(path_ + " has no MemTotal/MemAvailable lines");
    }
    DeviceInfo d;
    d.index = 0;
    d.kind = DeviceKind::kCpu;
    d.uuid = "CPU";
    d.name = cpu_name();
    d.total_bytes = total_kib * 1024;
    d.free_bytes = std::min(available_kib, total_kib) * 1024;
    d.used_bytes = d.total_bytes - d.free_bytes;
    // Which process uses host memory is not tracked: the used figure counts as outside use,
    // less what this process reports through the framework provider.
    d.processes_known = false;
    return std::vector<DeviceInfo>{d};
  }

 private:
  static std::string cpu_name() {
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("model name", 0) == 0) {
        const auto colon = line.find(':');
        if (colon != std::string::npos && colon + 2 <= line.size()) return line.substr(colon + 2);
      }
    }
    return "CPU";
  }

  const std::string path_;
};

}  // namespace

std::shared_ptr<DeviceBackend> make_cpu_backend(std::string meminfo_path) {
  return std::make_shared<CpuBackend>(std::move(meminfo_path));
}

}  // namespace gpumgr
