#include "core/accounting.h"

#include <charconv>
#include <cmath>
#include <optional>
#include <string_view>

#include "util/small_file.h"

namespace gpumgr::core {

std::uint64_t capacity_bytes(std::uint64_t total_bytes, double memory_limit) {
  // long double keeps every byte of a 64-bit total exact before the floor.
  const long double product =
      static_cast<long double>(memory_limit) * static_cast<long double>(total_bytes);
  return static_cast<std::uint64_t>(std::floor(product));
}

std::uint64_t foreign_bytes(const DeviceInfo& info, const std::vector<bool>& is_holder,
                            std::uint64_t holders_known_usage) {
  if (info.processes_known) {
    std::uint64_t sum = 0;
    for (std::size_t i = 0; i < info.processes.size(); ++i) {
      if (i >= is_holder.size() || !is_holder[i]) sum += info.processes[i].used_bytes;
    }
    return sum;
  }
  return info.used_bytes > holders_known_usage ? info.used_bytes - holders_known_usage : 0;
}

std::uint64_t foreign_bytes(const DeviceInfo& info, const std::set<std::uint32_t>& holder_pids,
                            std::uint64_t holders_known_usage) {
  std::vector<bool> is_holder;
  for (const auto& p : info.processes) is_holder.push_back(holder_pids.count(p.pid) != 0);
  return foreign_bytes(info, is_holder, holders_known_usage);
}

namespace {

// The parent pid from /proc/<pid>/stat ("pid (comm) state ppid ..."), read with
// read_small_file (the process may exit meanwhile): the command name may hold spaces and
// parentheses, so parse after the last ')'.
std::optional<std::uint32_t> parent_of(std::uint32_t pid, const std::string& proc_root) {
  const auto stat = read_small_file(proc_root + "/" + std::to_string(pid) + "/stat", 1023);
  if (!stat || stat->empty()) return std::nullopt;
  std::string_view text(*stat);
  const std::size_t paren = text.rfind(')');
  if (paren == std::string_view::npos || paren + 4 >= text.size()) return std::nullopt;
  text.remove_prefix(paren + 4);  // ") S " -> the ppid
  std::uint32_t ppid = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), ppid);
  if (ec != std::errc() || ptr == text.data()) return std::nullopt;
  return ppid;
}

}  // namespace

std::vector<std::uint32_t> process_ancestors(std::uint32_t pid, const std::string& proc_root) {
  std::vector<std::uint32_t> out;
  constexpr int kMaxDepth = 64;  // a cycle cannot happen, but a bound is cheap
  for (int depth = 0; depth < kMaxDepth; ++depth) {
    const auto parent = parent_of(pid, proc_root);
    if (!parent || *parent == 0) break;
    out.push_back(*parent);
    if (*parent == 1) break;
    pid = *parent;
  }
  return out;
}

Ancestry read_ancestry(const std::vector<DeviceInfo>& devices, const std::string& proc_root) {
  Ancestry out;
  for (const auto& d : devices) {
    for (const auto& p : d.processes) {
      if (p.pid != 0 && out.count(p.pid) == 0) out[p.pid] = process_ancestors(p.pid, proc_root);
    }
  }
  return out;
}

}  // namespace gpumgr::core
