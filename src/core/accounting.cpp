#include "core/accounting.h"

#include <cmath>

namespace gpumgr::core {

std::uint64_t capacity_bytes(std::uint64_t total_bytes, double memory_limit) {
  // long double keeps every byte of a 64-bit total exact before the floor.
  const long double product =
      static_cast<long double>(memory_limit) * static_cast<long double>(total_bytes);
  return static_cast<std::uint64_t>(std::floor(product));
}

std::uint64_t foreign_bytes(const DeviceInfo& info, const std::set<std::uint32_t>& holder_pids,
                            std::uint64_t holders_known_usage) {
  if (info.processes_known) {
    std::uint64_t sum = 0;
    for (const auto& p : info.processes) {
      if (holder_pids.count(p.pid) == 0) sum += p.used_bytes;
    }
    return sum;
  }
  return info.used_bytes > holders_known_usage ? info.used_bytes - holders_known_usage : 0;
}

}  // namespace gpumgr::core
