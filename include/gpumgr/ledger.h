// The ledger: what has been promised. One interface, two implementations: the in-process
// ledger (threads of one process share a budget) and the daemon-backed one (every process on
// the host shares the daemon's budget). Every caller (the CLI, the Python module, C++ users)
// goes through this interface, so that switching between the two changes no calling code.
//
// All Ledger methods may be called from any thread, concurrently.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gpumgr/device.h"
#include "gpumgr/status.h"

namespace gpumgr {

// How the device for a lease is chosen among those where it fits.
enum class PlacementPolicy {
  kBestFit,   // the device with the least admissible memory that fits (packs; the default)
  kSpread,    // the device with the most admissible memory
  kFirstFit,  // the lowest-indexed device that fits
};
std::string_view placement_policy_name(PlacementPolicy policy);  // "best-fit", ...
StatusOr<PlacementPolicy> parse_placement_policy(std::string_view name);

// How the wait queue is served.
enum class QueuePolicy {
  // Priority order, first come first served within a priority; later jobs may start ahead of
  // the head only where that cannot delay it (see docs/scheduling.md). The default.
  kBackfill,
  // Strict first come, first served: no job starts while an earlier one waits.
  kFifo,
};
std::string_view queue_policy_name(QueuePolicy policy);  // "backfill", "fifo"

enum class JobOutcome { kSucceeded, kFailed };

// What a caller asks for. `bytes` is per device: a job with gpus=2 and 10 GiB holds 10 GiB
// on each of two distinct devices, all or nothing.
struct LeaseRequest {
  std::string job_id;  // unique among active and waiting jobs; must not be empty
  std::uint64_t bytes = 0;
  int gpus = 1;
  int priority = 0;     // higher first
  int device = -1;      // pin to this device index; -1: the placement policy chooses
  std::string command;  // what the holder runs, for status displays (optional)
};

// A granted lease, as the ledger records it.
struct LeaseInfo {
  std::string job_id;
  std::vector<int> devices;
  std::uint64_t bytes = 0;  // per device
  int priority = 0;
  std::uint32_t pid = 0;  // the holder process (the daemon learns it from the kernel)
  std::uint32_t uid = 0;
  std::string command;
  std::chrono::system_clock::time_point granted_at;
  double waited_s = 0;  // how long it waited in the queue before it was granted
  // Which grant this is: unique within the in-process ledger that made it, so that a
  // handle released late cannot release a newer lease of the same job id. 0 where unknown
  // (leases from a daemon).
  std::uint64_t lease_id = 0;
};

// A request waiting in the queue.
struct WaiterInfo {
  std::string job_id;
  std::uint64_t bytes = 0;
  int gpus = 1;
  int priority = 0;
  int device = -1;
  int position = 0;  // 0 is the head
  std::uint32_t pid = 0;
  std::uint32_t uid = 0;
  std::string command;
  double waited_s = 0;
};

// Cumulative distribution with fixed bucket bounds (seconds), Prometheus-style: counts[i]
// is how many observations were <= bounds[i]; the last count is the +Inf bucket.
struct Histogram {
  std::vector<double> bounds;
  std::vector<std::uint64_t> counts;  // size bounds.size() + 1, cumulative
  std::uint64_t count = 0;
  double sum = 0;
  double min = 0;
  double max = 0;
  double mean() const { return count ? sum / static_cast<double>(count) : 0.0; }
};

struct LedgerStats {
  std::uint64_t jobs_succeeded = 0;
  std::uint64_t jobs_failed = 0;
  std::uint64_t jobs_rejected = 0;   // refused: no room now (non-blocking), or never fits
  std::uint64_t jobs_timed_out = 0;  // a waiting acquire's deadline passed
  std::uint64_t jobs_cancelled = 0;  // a waiting acquire was cancelled or its client left
  std::uint64_t jobs_processed() const { return jobs_succeeded + jobs_failed; }
  int active_jobs = 0;
  int peak_active_jobs = 0;
  Histogram hold_seconds;  // from grant to release
  Histogram wait_seconds;  // from request to grant, for every granted lease
};

// One device as the ledger sees it: the hardware's figures plus the accounting model of
// docs/accounting.md.
struct DeviceAccount {
  DeviceInfo info;
  std::uint64_t capacity_bytes = 0;    // floor(memory_limit * total)
  std::uint64_t leased_bytes = 0;      // sum of the leases placed here
  std::uint64_t foreign_bytes = 0;     // used by processes that hold no lease
  std::uint64_t admissible_bytes = 0;  // capacity - leased - foreign, never < 0
  std::uint64_t peak_leased_bytes = 0;
  int active_leases = 0;
  bool reserved_for_head = false;  // held back for the head of the queue
};

struct LedgerConfig {
  int max_concurrent_jobs = 3;
  double memory_limit = 0.8;
  PlacementPolicy placement = PlacementPolicy::kBestFit;
  QueuePolicy queue = QueuePolicy::kBackfill;
  std::chrono::milliseconds poll_interval{250};  // backend polling while anyone waits
};

struct Snapshot {
  BackendInfo backend;
  LedgerConfig config;
  std::vector<DeviceAccount> devices;
  std::vector<LeaseInfo> leases;
  std::vector<WaiterInfo> queue;
  LedgerStats stats;
  std::chrono::system_clock::time_point taken_at;
  std::string source;  // "in-process" or "daemon at /run/gpumgr/gpumgr.sock"
};

// Lets a caller give up a waiting acquire from another thread. Cheap to copy; copies share
// one state. Any thread may call any method.
class CancelToken {
 public:
  CancelToken();
  void cancel();
  bool cancelled() const;
  // Runs `fn` once when cancel() is called (at once if already cancelled). Returns an id
  // for unsubscribe(). Callbacks must be quick and must not call back into the token.
  std::uint64_t subscribe(std::function<void()> fn);
  void unsubscribe(std::uint64_t id);

 private:
  struct State;
  std::shared_ptr<State> state_;
};

struct WaitOptions {
  // No deadline: wait until granted, cancelled or impossible.
  std::optional<std::chrono::steady_clock::time_point> deadline;
  std::optional<CancelToken> cancel;

  static WaitOptions for_seconds(double seconds);
};

class Ledger {
 public:
  virtual ~Ledger() = default;

  // Takes a lease now or fails: kResourceExhausted when it does not fit now, kNeverFits when
  // it never can, kAlreadyExists for a duplicate job id, kInvalidArgument for bad input.
  virtual StatusOr<LeaseInfo> try_acquire(const LeaseRequest& request) = 0;
  // Waits in the queue until the lease is granted; kTimedOut at the deadline, kCancelled
  // when cancelled (token or cancel(job_id)). Never-fitting requests fail at once.
  virtual StatusOr<LeaseInfo> acquire(const LeaseRequest& request, const WaitOptions& wait) = 0;
  // Releases a granted lease. kNotFound for an unknown job.
  virtual Status release(std::string_view job_id, JobOutcome outcome) = 0;
  // Cancels a waiting request. kNotFound when no such job waits.
  virtual Status cancel(std::string_view job_id) = 0;
  // Whether a request of this size could be granted right now (false also while the
  // concurrency limit is reached). Errors only for bad input or a failed backend.
  virtual StatusOr<bool> can_admit(std::uint64_t bytes, int gpus, int device) = 0;
  virtual StatusOr<Snapshot> snapshot() = 0;
};

// Creates an in-process ledger over `backend`. Validates the config (max_concurrent_jobs
// >= 1, 0 < memory_limit <= 1) and queries the backend once. `pinned_device` >= 0 restricts
// every lease to that device.
StatusOr<std::shared_ptr<Ledger>> make_local_ledger(std::shared_ptr<DeviceBackend> backend,
                                                    const LedgerConfig& config,
                                                    int pinned_device = -1);

// Connects to the daemon (`gpumgr serve`) listening at `socket_path`: a Ledger whose leases
// belong to this connection. kUnavailable, saying where it looked and how to start the
// daemon, when nobody answers there.
StatusOr<std::shared_ptr<Ledger>> connect_daemon(const std::string& socket_path);

// Checks a LedgerConfig; the message names the bad field and value.
Status validate_config(const LedgerConfig& config);

}  // namespace gpumgr
