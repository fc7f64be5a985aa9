// LeaseJournal: the daemon's record of every lease it has granted and every request that
// waits, kept in its state directory so that a restart of the daemon (an upgrade, a crash,
// `systemctl restart`) loses nobody's lease and nobody's place in the queue (docs/daemon.md,
// "Restarts"). The daemon writes a lease here before it answers the grant, so that a crash
// loses nothing granted; the next daemon reads the journal, re-adopts the leases whose
// holders still run and restores the waiters in their order.
//
// One SQLite database in WAL mode per daemon socket (sqlite_file.h opens it): a committed
// record survives a crash of the daemon; a reboot makes every record stale (boot_id).
//
// Every method may be called from any thread (a mutex guards the connection); calls do file
// I/O, so callers keep them off their own hot locks.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "gpumgr/ledger.h"
#include "gpumgr/status.h"
#include "util/thread_annotations.h"

struct sqlite3;

namespace gpumgr::state {

// A process as the kernel knows it: its pid and its start time (clock ticks after boot), so
// that a reused pid is never mistaken for it, and the boot it ran in.
struct ProcessIdentity {
  std::uint32_t pid = 0;
  std::uint32_t uid = 0;
  std::uint64_t start_ticks = 0;
  std::string boot_id;  // /proc/sys/kernel/random/boot_id
};

// A lease the daemon granted, as it must be restored.
struct JournaledLease {
  // The request as granted: job id, bytes (resolved from an estimate), gpus, priority,
  // pinned device, command, kind, allowed devices, holder pid.
  LeaseRequest request;
  std::vector<int> devices;
  std::string token;     // what the holder names it by (docs/protocol.md)
  std::string estimate;  // LeaseInfo::estimate
  // The client that took it: the job lasts while this process runs. Where the client took
  // it for a descendant, request.holder_pid names that process.
  ProcessIdentity holder;
  std::int64_t requested_at_unix_ns = 0;
  std::int64_t granted_at_unix_ns = 0;
};

// A request that waits, as it must be restored.
struct JournaledWaiter {
  LeaseRequest request;    // as asked (bytes may be 0 with a kind: the estimate is asked again)
  std::string token;       // the token its lease will carry
  ProcessIdentity holder;  // the client that asked (see JournaledLease::holder)
  std::int64_t requested_at_unix_ns = 0;
  std::optional<std::int64_t> deadline_unix_ns;  // none: waits until granted or cancelled
};

struct JournalContents {
  std::vector<JournaledLease> leases;    // in grant order
  std::vector<JournaledWaiter> waiters;  // in the order they were queued
};

struct JournalRow;  // one record as written (lease_journal.cpp)

class LeaseJournal {
 public:
  // Opens (creating if missing) the journal at `path`; a corrupt or foreign file is moved
  // aside and `note` says so (see open_database). Errors as open_database.
  static StatusOr<std::unique_ptr<LeaseJournal>> open(const std::string& path,
                                                      std::string* note = nullptr);
  ~LeaseJournal();
  LeaseJournal(const LeaseJournal&) = delete;
  LeaseJournal& operator=(const LeaseJournal&) = delete;

  const std::string& path() const { return path_; }

  // Everything recorded, leases in grant order and waiters in queue order.
  StatusOr<JournalContents> load();
  // Records a lease, replacing a waiter (or an earlier lease) of the same job id, in one
  // transaction.
  Status put_lease(const JournaledLease& lease);
  // Records a waiter at the end of the queue order (an earlier record of the job id goes).
  Status put_waiter(const JournaledWaiter& waiter);
  // Forgets a job's lease or waiter (released, cancelled, expired); OK when none.
  Status remove(const std::string& job_id);
  // Forgets everything.
  Status clear();
  // How many leases and waiters are recorded.
  StatusOr<std::size_t> size();

 private:
  struct Statements;

  LeaseJournal(std::string path, sqlite3* db);
  Status exec_locked(const char* sql, const char* doing) REQUIRES(mutex_);
  Status prepare_locked() REQUIRES(mutex_);
  Status put_locked(const JournalRow& row, const char* doing) REQUIRES(mutex_);

  const std::string path_;
  Mutex mutex_;
  sqlite3* db_ GUARDED_BY(mutex_);
  std::unique_ptr<Statements> statements_ GUARDED_BY(mutex_);
};

// The journal's file for the daemon at `socket_path`: one per socket, so that several
// daemons on a host (one per Slurm node name, a test's own) sharing a state directory never
// restore each other's leases. `state_dir`/leases-<16 hex digits of the path's hash>.db.
std::string journal_path(const std::string& state_dir, const std::string& socket_path);

}  // namespace gpumgr::state
