// The accounting model of docs/accounting.md as pure functions, shared by the ledger, the
// daemon and the tests. Any thread may call them.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "gpumgr/device.h"

namespace gpumgr::core {

// capacity_d = floor(memory_limit * total_d): what leases may ever hold on the device.
std::uint64_t capacity_bytes(std::uint64_t total_bytes, double memory_limit);

// One process that holds leases on a device, for attribute_device(): its pid, how many
// leases it holds there and their sum, and (filled in) what it and its descendants use there.
struct HolderUse {
  std::uint32_t pid = 0;
  int leases = 0;
  std::uint64_t leased_bytes = 0;
  std::optional<std::uint64_t> used_bytes;  // empty: unknown (the backend lists no processes)
};

// A device's memory split between outside use and lease holders (docs/accounting.md).
struct DeviceAttribution {
  std::uint64_t foreign = 0;  // used by processes that hold no lease here
  std::uint64_t overuse = 0;  // the sum over holders of max(0, used - leased)
};

// Attributes the memory in use on a device to the holders of its leases and to outside use.
// Where the backend lists processes, each counts to the nearest of itself and its ancestors
// that holds a lease on the device (a `gpumgr run` and the command it started count as one
// holder; a holder started by another holder counts as itself), and a process with no holder
// among them is outside use; every holder's use is then known (0 when none of its processes
// is listed). Where it does not, only `self_pid`'s use may be known (`self_usage`, e.g.
// torch's reserved bytes), and outside use is used_d minus that, never below 0.
// Any thread may call it; it reads nothing but its arguments.
DeviceAttribution attribute_device(
    const DeviceInfo& info, std::span<HolderUse> holders,
    const std::unordered_map<std::uint32_t, std::vector<std::uint32_t>>& ancestry,
    std::uint32_t self_pid, std::optional<std::uint64_t> self_usage);

// What one lease of a holder with several leases on a device uses there: the holder's use
// split in proportion to the leases' sizes (exactly, rounding down; the first lease may be
// short by a few bytes). A holder with one lease uses all of it.
std::uint64_t lease_share(std::uint64_t holder_used, std::uint64_t lease_bytes,
                          std::uint64_t holder_leased);

// A process's ancestors (parent first, up to init), from /proc/<pid>/stat under `proc_root`;
// empty when the process is gone or cannot be read. A lease covers its holder's children:
// the command `gpumgr run` starts, or the workers a Python holder forks, use the memory the
// lease was taken for.
std::vector<std::uint32_t> process_ancestors(std::uint32_t pid,
                                             const std::string& proc_root = "/proc");

// The ancestors of every process listed on these devices (pid 0, outside use, excluded).
using Ancestry = std::unordered_map<std::uint32_t, std::vector<std::uint32_t>>;
Ancestry read_ancestry(const std::vector<DeviceInfo>& devices,
                       const std::string& proc_root = "/proc");

// `root` and every live process descended from it (root first, then in /proc order), read
// from /proc: what the overuse policy signals. Just `root` when /proc cannot be listed.
std::vector<std::uint32_t> process_tree(std::uint32_t root, const std::string& proc_root = "/proc");

}  // namespace gpumgr::core
