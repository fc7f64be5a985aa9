// The accounting model of docs/accounting.md as pure functions, shared by the ledger, the
// daemon and the tests. Any thread may call them.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "gpumgr/device.h"

namespace gpumgr::core {

// capacity_d = floor(memory_limit * total_d): what leases may ever hold on the device.
std::uint64_t capacity_bytes(std::uint64_t total_bytes, double memory_limit);

// foreign_d: memory in use by processes that hold no lease on the device. Where the backend
// lists processes, the sum over processes whose pid is not in `holder_pids`; else used_d
// minus what lease holders are known to use (`holders_known_usage`), never below 0.
std::uint64_t foreign_bytes(const DeviceInfo& info, const std::set<std::uint32_t>& holder_pids,
                            std::uint64_t holders_known_usage);

// The same, with `is_holder[i]` telling whether info.processes[i] is covered by a lease.
std::uint64_t foreign_bytes(const DeviceInfo& info, const std::vector<bool>& is_holder,
                            std::uint64_t holders_known_usage);

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

}  // namespace gpumgr::core
