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
  // Plain greedy backfill: every waiter that fits anywhere starts at once, in queue order,
  // with no reservation. Shortest waits on average; a large job may wait without bound
  // while smaller ones keep filling the devices it needs.
  kGreedy,
};
std::string_view queue_policy_name(QueuePolicy policy);  // "backfill", "fifo", "greedy"
StatusOr<QueuePolicy> parse_queue_policy(std::string_view name);

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
  // What kind of job this is ("sdxl-1024"): its measured peaks and hold times are recorded
  // under this name, and with `bytes` = 0 the lease asks for the kind's learned estimate
  // (docs/accounting.md, "Learned estimates"). Validated like a job id; empty: none.
  std::string kind;
  // With `bytes` = 0 and a kind that has too few runs for an estimate: ask for this many
  // bytes instead (0: no fallback, the request fails naming the kind and its run count).
  std::uint64_t default_bytes = 0;
  // The devices the lease may go on (empty: any), for a job that must stay inside devices
  // assigned to it elsewhere (a Slurm allocation): it waits for room on whichever of them
  // frees first. Distinct indices, at least `gpus` of them; not together with `device`.
  std::vector<int> allowed_devices;
  // The process that holds the lease when a client takes it for one of its descendants (the
  // Slurm plugin, for a task of slurmstepd): that process's memory is the lease's use, and it
  // is what an overuse policy signals. 0: the client itself. The daemon accepts only the
  // client or a process descending from it that runs as the client's uid.
  std::uint32_t holder_pid = 0;
  // Revocable leases (docs/scheduling.md, "Revocable leases"): the scheduler may take the
  // lease back for a waiter that cannot fit otherwise; its holder is told at once and, after
  // a grace period, killed. A preemptible lease is a running job that can be restarted; it
  // is revoked only for waiters of strictly higher priority.
  bool preemptible = false;
  // A resident: an idle model kept loaded while nobody needs its memory, by this name
  // (unique among active and waiting leases, no control characters; empty: not resident).
  // Residents are revoked before preemptible jobs, the least recently used first, for
  // waiters of at least their priority. A lease is preemptible or resident, not both.
  std::string resident;
  // The resident this job runs beside (its name; empty: none): a serving worker's request
  // for working memory next to the model it keeps loaded. The resident must be active and
  // not being revoked; the lease goes only on the resident's devices (within `device` or
  // `allowed_devices` if given), that resident is never revoked for it, and its grant
  // counts as a use of the resident (touch). Not on a request that is itself resident.
  std::string beside_resident;
  // Seconds from revocation to the kill of the holder; empty: the ledger's default
  // (`gpumgr serve --revoke-grace`). Finite, in [0, 86400].
  std::optional<double> revoke_grace_s;
};

// What a lease's holder uses on one of its devices, measured from the backend's process
// list (the holder and its descendants). Empty optionals: unknown (the backend cannot
// attribute memory to processes there), which is never shown as 0.
struct DeviceUse {
  int device = 0;
  std::optional<std::uint64_t> used_bytes;       // at the last poll
  std::optional<std::uint64_t> peak_used_bytes;  // the most seen during this lease
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
  std::string kind;  // LeaseRequest::kind
  // Measured use, one entry per device in `devices` order. Empty on the lease an acquire
  // returns (nothing has been measured yet); filled in every snapshot.
  std::vector<DeviceUse> usage;
  // Whether the holder uses more than its lease (beyond the overuse tolerance) on any of its
  // devices, and for how long it has (0 while it does not).
  bool overused = false;
  double overused_s = 0;
  // Where `bytes` came from when the request asked for its kind's estimate ("learned from 37
  // runs: p95 11.2 GiB + 10%", "default: 6 GiB (sdxl has 3 of the 5 runs needed)"); empty
  // for an explicit size.
  std::string estimate;
  // The overuse policy acted on this lease: "terminating: exceeded its lease: used X of Y".
  std::string enforcement;
  // Revocable leases (LeaseRequest::preemptible, ::resident): "preemptible", "resident" or
  // empty; the resident's name.
  std::string revocable;
  std::string resident;
  // A resident: how many leases run beside it now (a resident in use goes after idle ones).
  int in_use_by = 0;
  // A lease beside a resident (LeaseRequest::beside_resident): the resident's name.
  std::string beside_resident;
  // Being revoked: the holder was told; after revoke_in_s more seconds its processes are
  // killed and the lease released. `revoked_for`: the waiter it makes room for (empty for an
  // explicit revoke).
  bool revoking = false;
  double revoke_in_s = 0;
  std::string revoked_for;
  // The grace a revocation of this lease gives (LeaseRequest::revoke_grace_s, or the
  // ledger's default); 0 for a lease that cannot be revoked.
  double revoke_grace_s = 0;
};

// A revocation as the holder hears of it (Ledger::set_revoke_handler).
struct RevokeNotice {
  std::string job_id;
  std::string cause;    // "preempted" (a preemptible job) or "resident"
  std::string for_job;  // the waiter it makes room for; empty for an explicit revoke
  double grace_s = 0;   // seconds from now until the holder's processes are killed
  std::string message;  // one line: why, and what happens at the grace's end
  // False when the revocation starts; true in a second notice if the grace ended before the
  // holder released: its processes were killed and the lease released.
  bool ended = false;
};

// A request waiting in the queue.
struct WaiterInfo {
  std::string job_id;
  std::uint64_t bytes = 0;
  int gpus = 1;
  int priority = 0;
  int device = -1;
  // LeaseRequest::allowed_devices; beside a resident, the resident's devices it waits on.
  std::vector<int> allowed_devices;
  std::string beside_resident;  // LeaseRequest::beside_resident
  int position = 0;             // 0 is the head
  std::uint32_t pid = 0;
  std::uint32_t uid = 0;
  std::string command;
  double waited_s = 0;
  // Why it waits beyond the devices: its quota ("uid 1000 holds 6 GiB of its 8 GiB
  // (quota.default.max_vram)"); empty when its quota lets it start.
  std::string quota_wait;
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
  // Times a lease went over its size (beyond the tolerance): one per episode.
  std::uint64_t overuse_events = 0;
  // Leases released because the overuse policy terminated their holder.
  std::uint64_t overuse_terminations = 0;
  // Revocations decided, by cause (a preemptible job preempted, a resident unloaded), and
  // holders killed because they had not released when the grace period ended.
  std::uint64_t revocations_preempted = 0;
  std::uint64_t revocations_resident = 0;
  std::uint64_t revocation_kills = 0;
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
  std::uint64_t capacity_bytes = 0;  // floor(memory_limit * total)
  std::uint64_t leased_bytes = 0;    // sum of the leases placed here
  std::uint64_t foreign_bytes = 0;   // used by processes that hold no lease
  // What lease holders use beyond their leases: the sum over leases of max(0, used - leased)
  // (docs/accounting.md). It takes room from everyone else, so admission counts it.
  std::uint64_t overuse_bytes = 0;
  std::uint64_t admissible_bytes = 0;  // capacity - leased - overuse - foreign, never < 0
  std::uint64_t peak_leased_bytes = 0;
  int active_leases = 0;
  bool reserved_for_head = false;  // held back for the head of the queue
};

// What the ledger does when a lease's holder uses more than its lease.
enum class OverusePolicy {
  kReport,     // count it, log it, flag the lease (the default)
  kTerminate,  // also SIGTERM the holder's process tree after the grace, SIGKILL after another
};
std::string_view overuse_policy_name(OverusePolicy policy);  // "report", "terminate"
StatusOr<OverusePolicy> parse_overuse_policy(std::string_view name);

struct OveruseConfig {
  OverusePolicy policy = OverusePolicy::kReport;
  double grace_s = 10;           // how long overuse may last before `terminate` acts
  double tolerance_percent = 5;  // use up to leased * (1 + tolerance) is not overuse
};

struct LedgerConfig {
  int max_concurrent_jobs = 3;
  double memory_limit = 0.8;
  PlacementPolicy placement = PlacementPolicy::kBestFit;
  QueuePolicy queue = QueuePolicy::kBackfill;
  // Backend polling while any lease is held or any job waits.
  std::chrono::milliseconds poll_interval{250};
  OveruseConfig overuse;
  // Seconds a revoked lease's holder has to release before its processes are killed
  // (LeaseRequest::revoke_grace_s overrides it per lease). Finite, in [0, 86400].
  double revoke_grace_s = 30;
  // Where the ledger keeps its history of job kinds (a SQLite file); empty: none, and
  // requests for a kind's estimate fail. The daemon always has one (--state-dir).
  std::string history_path;
  // Fair share (docs/scheduling.md): within a priority, the users with the least recent use
  // (GiB-seconds leased, decayed with this half-life in seconds) go first; false: first
  // come, first served.
  bool fair_share = true;
  double fair_share_half_life_s = 3600;
};

// What the history says of one job kind (`gpumgr estimates`).
struct KindEstimate {
  std::string kind;
  std::uint64_t runs = 0;           // recorded runs (all of them, not only the recent window)
  std::uint64_t measured_runs = 0;  // of the recent window, those whose peak was measured
  std::optional<std::uint64_t> peak_p50_bytes, peak_p95_bytes, peak_max_bytes;
  std::optional<double> hold_p50_s, hold_p95_s;
  std::uint64_t overused_runs = 0;  // runs whose holder exceeded its lease
  std::chrono::system_clock::time_point last_seen;
  // The size `bytes = 0` asks for, when enough runs were measured; else empty.
  std::optional<std::uint64_t> estimate_bytes;
  std::string estimate_note;  // "learned from 37 runs: p95 11.2 GiB + 10%", or why there is none
};

// One user's use of the host against its quota (docs/config.md), and its fair-share use.
struct UserUsage {
  std::uint32_t uid = 0;
  std::uint64_t leased_bytes = 0;  // VRAM leased now: each lease's size times its devices
  std::uint64_t jobs = 0;          // active leases
  std::uint64_t waiting = 0;       // waiting requests
  // The tightest quota that applies to it (its own, the default, its groups'); none: no limit.
  std::optional<std::uint64_t> max_vram_bytes;
  std::optional<std::uint64_t> max_jobs;
  double fair_share_gib_s = 0;  // recent use: GiB-seconds leased, decayed (the half-life)
};

struct Snapshot {
  BackendInfo backend;
  LedgerConfig config;
  std::vector<DeviceAccount> devices;
  std::vector<LeaseInfo> leases;
  std::vector<WaiterInfo> queue;
  // Each user with leases, waiters, recent use or a quota table of its own, by uid.
  std::vector<UserUsage> users;
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

  // A deadline `seconds` from now: negative counts as 0, more than 1e9 (31 years) as 1e9
  // (the daemon protocol's limit, and beyond the clock's range near 9.2e9); NaN and
  // infinity give no deadline.
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
  // The history of job kinds, in name order (empty where no history is kept).
  virtual StatusOr<std::vector<KindEstimate>> estimates() = 0;
  // Forgets a kind's history. kNotFound for a kind with none.
  virtual Status forget_kind(std::string_view kind) = 0;

  // Revocable leases (docs/scheduling.md, "Revocable leases"). `handler` runs once for each
  // revocation of a lease this ledger granted to this process, on a thread of the ledger;
  // it must return quickly (signal, set a flag) and must not call the ledger (with a daemon
  // it may run on the thread that reads the daemon's replies): release from another thread.
  // Set it before taking revocable leases.
  virtual void set_revoke_handler(std::function<void(const RevokeNotice&)> handler) {
    (void)handler;
  }
  // Revokes a revocable lease now, as if a waiter needed it: its holder is told and has the
  // grace period to release. kNotFound, kPermissionDenied (another user's lease),
  // kFailedPrecondition (not revocable, or already being revoked).
  virtual Status revoke(std::string_view job_id) {
    return Status(ErrorCode::kFailedPrecondition,
                  "this ledger cannot revoke job '" + std::string(job_id) + "'");
  }
  // A resident lease was used now: it becomes the most recently used (revoked last).
  // kNotFound, kPermissionDenied, kFailedPrecondition (not resident, or being revoked).
  virtual Status touch(std::string_view job_id) {
    return Status(ErrorCode::kFailedPrecondition,
                  "this ledger keeps no resident lease '" + std::string(job_id) + "'");
  }
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

// Checks a job kind (LeaseRequest::kind) as job ids are checked: not empty, at most 256
// bytes, no control characters.
Status check_job_kind(std::string_view kind);

}  // namespace gpumgr
