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
  return foreign_bytes_if(
      info, [&](std::uint32_t pid) { return holder_pids.count(pid) != 0; }, holders_known_usage);
}

}  // namespace gpumgr::core
