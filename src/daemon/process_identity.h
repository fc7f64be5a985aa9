// Who a process is, as /proc says: its parent, its start time (clock ticks after boot) and
// whether it still runs, so that the daemon recognises a lease's holder after a restart of
// its own, and never mistakes a new process that reused a pid for it. Linux only.
//
// Every function may be called from any thread; each reads /proc afresh.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>

#include "gpumgr/status.h"
#include "state/lease_journal.h"

namespace gpumgr::daemon {

// A process as of one reading: its pid and its start time.
struct ProcessId {
  std::uint32_t pid = 0;
  std::uint64_t start = 0;
};

struct ProcessStat {
  std::uint32_t ppid = 0;
  std::uint64_t start = 0;
  bool running = false;  // neither a zombie nor dead
};

// /proc/PID/stat, read now; empty when the process is gone or unreadable.
std::optional<ProcessStat> read_process_stat(std::uint32_t pid);

// The uids of process `pid` from /proc/PID/status (real, effective, saved, filesystem);
// empty when it is gone or unreadable.
std::optional<std::array<std::uint32_t, 4>> read_process_uids(std::uint32_t pid);

// Whether `pid` is `ancestor` or descends from it (following /proc's parent links, at most
// 256 generations) and runs as `uid` (real and effective; any uid when `uid` is 0, root), so
// that a client may name the process that holds a lease for it (LeaseRequest::holder_pid).
// kPermissionDenied naming the pid and why otherwise.
Status check_descendant(std::uint32_t pid, std::uint32_t ancestor, std::uint32_t uid);

// This boot's id (/proc/sys/kernel/random/boot_id); empty where unreadable.
const std::string& current_boot_id();

// The identity of process `pid` of uid `uid` now (start time, this boot); start_ticks is 0
// when the process cannot be read (it has gone).
state::ProcessIdentity identity_of(std::uint32_t pid, std::uint32_t uid);

// Whether the process `who` names still runs: this boot, same pid, same start time, neither
// a zombie nor gone. False for an identity whose start time is unknown (0).
bool still_runs(const state::ProcessIdentity& who);

}  // namespace gpumgr::daemon
