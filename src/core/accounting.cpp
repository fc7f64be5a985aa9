#include "core/accounting.h"

#include <dirent.h>

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

DeviceAttribution attribute_device(
    const DeviceInfo& info, std::span<HolderUse> holders,
    const std::unordered_map<std::uint32_t, std::vector<std::uint32_t>>& ancestry,
    std::uint32_t self_pid, std::optional<std::uint64_t> self_usage) {
  DeviceAttribution out;
  auto holder_of = [&holders](std::uint32_t pid) -> HolderUse* {
    for (HolderUse& h : holders) {
      if (h.pid == pid) return &h;
    }
    return nullptr;
  };
  if (info.processes_known) {
    for (HolderUse& h : holders) h.used_bytes = 0;
    for (const ProcessUsage& p : info.processes) {
      HolderUse* owner = p.pid == 0 || holders.empty() ? nullptr : holder_of(p.pid);
      if (owner == nullptr && p.pid != 0 && !holders.empty()) {
        const auto it = ancestry.find(p.pid);
        if (it != ancestry.end()) {
          for (const std::uint32_t ancestor : it->second) {
            if ((owner = holder_of(ancestor)) != nullptr) break;
          }
        }
      }
      if (owner != nullptr) {
        *owner->used_bytes += p.used_bytes;
      } else {
        out.foreign += p.used_bytes;
      }
    }
  } else {
    std::uint64_t known = 0;
    for (HolderUse& h : holders) {
      h.used_bytes.reset();
      if (h.pid == self_pid && self_usage) {
        h.used_bytes = self_usage;
        known += *self_usage;
      }
    }
    out.foreign = info.used_bytes > known ? info.used_bytes - known : 0;
  }
  for (const HolderUse& h : holders) {
    if (h.used_bytes && *h.used_bytes > h.leased_bytes)
      out.overuse += *h.used_bytes - h.leased_bytes;
  }
  return out;
}

std::uint64_t lease_share(std::uint64_t holder_used, std::uint64_t lease_bytes,
                          std::uint64_t holder_leased) {
  if (holder_leased == 0 || lease_bytes >= holder_leased) return holder_used;
  __extension__ using Uint128 = unsigned __int128;
  const Uint128 share = static_cast<Uint128>(holder_used) * lease_bytes / holder_leased;
  return static_cast<std::uint64_t>(share);
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

namespace gpumgr::core {

std::vector<std::uint32_t> process_tree(std::uint32_t root, const std::string& proc_root) {
  std::vector<std::uint32_t> tree{root};
  DIR* dir = ::opendir(proc_root.c_str());
  if (dir == nullptr) return tree;
  // Parent of every process, then a walk down from root: one pass over /proc.
  std::unordered_map<std::uint32_t, std::vector<std::uint32_t>> children;
  while (const dirent* entry = ::readdir(dir)) {
    std::uint32_t pid = 0;
    const std::string_view name(entry->d_name);
    const auto [ptr, ec] = std::from_chars(name.data(), name.data() + name.size(), pid);
    if (ec != std::errc() || ptr != name.data() + name.size() || pid == 0) continue;
    if (const auto parent = parent_of(pid, proc_root)) children[*parent].push_back(pid);
  }
  ::closedir(dir);
  for (std::size_t i = 0; i < tree.size() && tree.size() < 100000; ++i) {
    const auto it = children.find(tree[i]);
    if (it != children.end()) tree.insert(tree.end(), it->second.begin(), it->second.end());
  }
  return tree;
}

}  // namespace gpumgr::core
