// LocalLedger: the in-process Ledger. It owns a Scheduler (the decisions), polls the device
// backend (the facts), keeps the statistics, and turns grants into callbacks or wake-ups.
// The daemon serves every client through one LocalLedger, using the *_as and async entry
// points that carry the holder's identity from the kernel.
//
// Every public method may be called from any thread. Callbacks passed to acquire_async run
// on the thread that caused the grant (a releasing caller, or the housekeeper thread), after
// the ledger's mutex is released; they may call back into the ledger.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/accounting.h"
#include "core/overuse.h"
#include "core/quota.h"
#include "core/quota_book.h"
#include "core/revocation.h"
#include "core/scheduler.h"
#include "gpumgr/device.h"
#include "gpumgr/ledger.h"
#include "util/thread_annotations.h"

namespace gpumgr::state {
class KindHistory;
}

namespace gpumgr::core {

// A distribution of durations as the ledger keeps it: integer nanoseconds, one count per
// bucket (not cumulative), so that an observation on the hot path is a short integer search
// and one increment. to_histogram() gives the public, Prometheus-style form in seconds.
// Not synchronised: the ledger's mutex guards it.
class DurationHistogram {
 public:
  void observe(TimeNs duration);  // negative durations count as 0
  Histogram to_histogram() const;

 private:
  // The bucket bounds for wait and hold times, 5 ms to 1 h.
  static constexpr std::array<TimeNs, 16> kBounds = {
      5'000'000,      10'000'000,      25'000'000,      50'000'000,
      100'000'000,    250'000'000,     500'000'000,     1'000'000'000,
      2'500'000'000,  5'000'000'000,   10'000'000'000,  30'000'000'000,
      60'000'000'000, 300'000'000'000, 900'000'000'000, 3'600'000'000'000};
  std::array<std::uint64_t, kBounds.size() + 1> counts_{};  // the last for +Inf
  std::uint64_t count_ = 0;
  // The sum, exactly, as whole seconds and nanoseconds below one second: a sum of
  // nanoseconds alone would overflow after 292 years of holds, and one of doubles drifts.
  std::uint64_t sum_seconds_ = 0;
  std::uint64_t sum_nanoseconds_ = 0;
  TimeNs min_ = 0;
  TimeNs max_ = 0;
};

class LocalLedger final : public Ledger {
 public:
  using Done = std::function<void(StatusOr<LeaseInfo>)>;
  using EventHandler = std::function<void(const LeaseEvent&)>;
  // Sends a signal to a holder's process tree (the overuse policy's `terminate`); returns
  // how many processes it signalled. The default reads /proc (process_tree) and kill(2)s.
  using Signaller = std::function<int(std::uint32_t pid, int signal)>;
  using SteadyTime = std::chrono::steady_clock::time_point;

  static StatusOr<std::shared_ptr<LocalLedger>> create(std::shared_ptr<DeviceBackend> backend,
                                                       const LedgerConfig& config,
                                                       int pinned_device = -1);
  ~LocalLedger() override;
  LocalLedger(const LocalLedger&) = delete;
  LocalLedger& operator=(const LocalLedger&) = delete;

  // Ledger, on behalf of this process.
  StatusOr<LeaseInfo> try_acquire(const LeaseRequest& request) override;
  StatusOr<LeaseInfo> acquire(const LeaseRequest& request, const WaitOptions& wait) override;
  Status release(std::string_view job_id, JobOutcome outcome) override;
  Status cancel(std::string_view job_id) override;
  StatusOr<bool> can_admit(std::uint64_t bytes, int gpus, int device) override;
  StatusOr<Snapshot> snapshot() override;
  StatusOr<std::vector<KindEstimate>> estimates() override;
  Status forget_kind(std::string_view kind) override;
  // Revocable leases (core/revocation.h). The handler hears of every revocation (the daemon
  // routes each to its holder's connection), on the thread that caused it, outside the lock.
  void set_revoke_handler(std::function<void(const RevokeNotice&)> handler) override;
  Status revoke(std::string_view job_id) override { return revoke_as(job_id, std::nullopt); }
  Status touch(std::string_view job_id) override { return touch_as(job_id, std::nullopt); }
  // On behalf of `requester_uid` (none: no check): only the holder's uid or root.
  Status revoke_as(std::string_view job_id, const std::optional<std::uint32_t>& requester_uid);
  Status touch_as(std::string_view job_id, const std::optional<std::uint32_t>& requester_uid);

  // What opening the history said, if anything worth saying ("the history database ... was
  // corrupt; moved it to ..."); empty otherwise.
  const std::string& history_note() const { return history_note_; }
  // Overuse events (started, ended, terminating, killed) go here, on the thread that polled,
  // outside the ledger's lock. Set it before leases are taken; it must not block for long.
  void set_event_handler(EventHandler handler);
  // Replaces how the overuse policy signals holders (tests).
  void set_signaller(Signaller signaller);

  // try_acquire() for the Manager's hot path: fills `lease` (which may hold an earlier
  // lease's values: every field is set) instead of returning a LeaseInfo to copy.
  Status try_acquire_into(const LeaseRequest& request, LeaseInfo& lease);

  // On behalf of another process (the daemon's clients).
  StatusOr<LeaseInfo> try_acquire_as(const LeaseRequest& request, Holder holder);
  // Queues a request; `done` runs exactly once: with the lease, or with kTimedOut,
  // kCancelled, or a validation error (then before this returns, on this thread).
  // `requested_at` (wall-clock; default now) keeps a restored waiter's waiting time.
  void acquire_async(const LeaseRequest& request, Holder holder, std::optional<SteadyTime> deadline,
                     Done done,
                     std::optional<std::chrono::system_clock::time_point> requested_at = {});
  // `requester_uid` may release only its own uid's leases, unless it is root (0).
  Status release_as(std::string_view job_id, JobOutcome outcome, std::uint32_t requester_uid);
  // Releases on behalf of `requester_uid` (none: no permission check) and reports the
  // released lease's devices in `devices` (for the manager's cleanup hook) unless it is null.
  // A `lease_id` other than 0 releases only that grant (LeaseInfo::lease_id): kNotFound if
  // the job's lease is another one. (The optional goes by reference: passed by value in a
  // register, it is loaded whole right after its flag byte is stored, which stalls.)
  Status release_as(std::string_view job_id, JobOutcome outcome,
                    const std::optional<std::uint32_t>& requester_uid, std::vector<int>* devices,
                    std::uint64_t lease_id = 0);
  Status cancel_as(std::string_view job_id, std::uint32_t requester_uid);

  // A lease that an earlier daemon granted, to be taken back after a restart.
  struct AdoptedLease {
    LeaseRequest request;  // as granted: bytes per device, priority, command, kind
    std::vector<int> devices;
    std::string estimate;  // LeaseInfo::estimate
    // Wall-clock times, so that its wait and hold times count from its first request.
    std::chrono::system_clock::time_point requested_at;
    std::chrono::system_clock::time_point granted_at;
  };
  // Takes back such a lease for `holder` on the same devices, whether or not it fits now
  // (Scheduler::adopt): its memory is in use either way. kNotFound for a device that no
  // longer exists, kAlreadyExists for a job id in use, kInvalidArgument for a bad record.
  StatusOr<LeaseInfo> adopt_as(const AdoptedLease& lease, Holder holder);

  // Queries the backend now and schedules whatever that lets start.
  Status refresh();
  // Attributes this process's own device memory (e.g. torch's reserved bytes) to its
  // leases where the backend cannot list processes; see docs/accounting.md.
  void set_own_usage_provider(std::function<std::optional<std::uint64_t>(int device)> provider);

  std::string description() const { return "in-process"; }

  // Applies new limits while leases are held and jobs wait (the daemon's reload): the
  // concurrency limit, the memory limit, the poll interval and the overuse policy of
  // `config`. Its placement, queue policy and history path must be the running ones (they
  // need a new ledger: kInvalidArgument). Validated first: a refused config changes nothing.
  // A raised limit lets waiters start at once (their callbacks run on this thread); a
  // lowered one revokes no lease: leases above it run on, and no new one starts until it
  // fits. Waiters keep their places either way.
  Status reconfigure(const LedgerConfig& config);
  // Installs quotas (at start and at each reload; docs/config.md): new limits apply to the
  // next grants and never end a running lease. Waiters that can never fit them are dropped
  // with kQuotaExceeded (their callbacks run on this thread); the others keep their places.
  // `groups` gives a uid's groups (default: the system's user database, groups_of).
  Status set_quotas(const QuotaConfig& quotas, QuotaBook::GroupResolver groups = groups_of);

 private:
  LocalLedger(std::shared_ptr<DeviceBackend> backend, const LedgerConfig& config, int pinned_device,
              std::vector<DeviceInfo> devices, std::shared_ptr<state::KindHistory> history,
              std::string history_note);

  // What the ledger knows of a lease beyond what the scheduler holds: where its size came
  // from, its peaks, its overuse episode. Kept only for leases that have any of these (and
  // for waiters with an estimate note), so that most leases on the hot path have none.
  struct LeaseTrack {
    std::uint64_t lease_id = 0;  // 0 while the job waits
    std::string estimate;
    std::vector<std::optional<std::uint64_t>> peaks;  // per device of the lease, in order
    OveruseEpisode overuse;
  };

  // kInvalidArgument when an in-process caller names a holder other than this process.
  Status check_own_holder(const LeaseRequest& request) const;
  // A pinned manager (pinned_device >= 0): puts an unpinned request on its device, when the
  // request's allowed devices (if any) include it; check_pin() then refuses what is left.
  void pin_request(LeaseRequest& request) const;
  Status check_pin(const LeaseRequest& request) const;
  // Resolves a request for a kind's estimate (bytes = 0 with a kind) into `resolved` and the
  // note on where its size came from; leaves `resolved` empty for any other request. Reads
  // the history: call without the ledger's lock.
  Status resolve_estimate(const LeaseRequest& request, std::optional<LeaseRequest>& resolved,
                          std::string& note);

  // Applies a backend reading to the scheduler (capacity, foreign, health).
  void apply_devices_locked(std::vector<DeviceInfo> devices) REQUIRES(mutex_);
  void apply_backend_failure_locked(const Status& failure) REQUIRES(mutex_);
  // Splits a device's use between its holders and outside use (attribute_device) and gives
  // the scheduler the outside use and the overuse.
  void attribute_locked(int device) REQUIRES(mutex_);
  // Counts `delta` more leases of `pid` (of `bytes` each) on these devices and attributes
  // them again.
  void change_holder_locked(std::span<const int> devices, std::uint32_t pid, int delta,
                            std::uint64_t bytes) REQUIRES(mutex_);
  // What a lease of `bytes` held by `pid` uses on one of its devices now (its share of the
  // holder's use, see lease_share); empty where unknown.
  std::optional<std::uint64_t> lease_use_locked(std::uint32_t pid, std::uint64_t bytes,
                                                int device) const REQUIRES(mutex_);
  // At a release: records a run of the lease's kind in the history (outside the lock, on
  // `calls`) and forgets the lease's track.
  void record_run_locked(std::string_view job_id, const Released& released, JobOutcome outcome,
                         std::vector<std::function<void()>>& calls) REQUIRES(mutex_);
  // After a reading: updates every lease's peaks and overuse episode, and acts on the overuse
  // policy (events and signals are queued on `calls`).
  void track_usage_locked(TimeNs now, std::vector<std::function<void()>>& calls) REQUIRES(mutex_);
  // Fills a snapshot's lease with its measured use and overuse state.
  void fill_usage_locked(const ActiveEntry& entry, LeaseInfo& info, TimeNs now) const
      REQUIRES(mutex_);
  // Queues an event for the handler, if one is set.
  void emit_locked(LeaseEvent event, std::vector<std::function<void()>>& calls) REQUIRES(mutex_);
  // Refreshes when the last reading is older than the poll interval; returns the time now.
  TimeNs refresh_if_stale();
  // Runs a scheduling pass and collects the callbacks of those granted.
  void schedule_locked(TimeNs now, std::vector<std::function<void()>>& calls) REQUIRES(mutex_);
  // Tells the holders of the leases the scheduler revoked and starts their grace periods.
  void start_revocations_locked(const std::vector<Revocation>& revocations, TimeNs now,
                                std::vector<std::function<void()>>& calls) REQUIRES(mutex_);
  // Kills the holders of revoked leases whose grace has ended and releases those leases.
  void end_revocations_locked(TimeNs now, std::vector<std::function<void()>>& calls)
      REQUIRES(mutex_);
  // Records one grant: holder attribution and statistics.
  void record_grant_locked(const ActiveLease& lease) REQUIRES(mutex_);
  // Records grants and queues the callbacks of those that waited.
  void handle_grants_locked(const std::vector<Grant>& grants,
                            std::vector<std::function<void()>>& calls) REQUIRES(mutex_);
  void finish_dropped_locked(const std::vector<Dropped>& dropped,
                             std::vector<std::function<void()>>& calls) REQUIRES(mutex_);
  LeaseInfo lease_info_locked(const ActiveEntry& entry) const REQUIRES(mutex_);
  void fill_lease_info_locked(const ActiveEntry& entry, LeaseInfo& info) const REQUIRES(mutex_);
  Status try_acquire_into(const LeaseRequest& request, Holder holder, LeaseInfo& lease);
  Status release_locked(std::string_view job_id, JobOutcome outcome,
                        const std::optional<std::uint32_t>& requester_uid,
                        std::vector<std::function<void()>>& calls, std::vector<int>* devices,
                        std::uint64_t lease_id) REQUIRES(mutex_);
  void housekeeper_loop();
  static TimeNs now_ns();
  static TimeNs to_ns(SteadyTime t);
  // Wall-clock minus steady-clock time, read now.
  static TimeNs wall_offset_now();
  // A steady-clock time as wall-clock time, by the offset taken at the last refresh (a
  // snapshot refreshes first): the hot path reads one clock, and grant times are for display
  // (a wall-clock step shows up at the next refresh, within a poll interval).
  std::chrono::system_clock::time_point wall_time(TimeNs steady) const;

  const std::shared_ptr<DeviceBackend> backend_;
  const int pinned_device_;
  const BackendInfo backend_info_;
  const Holder self_;

  Mutex refresh_mutex_;  // serialises backend queries, which run outside mutex_
  mutable Mutex mutex_;
  // Changed only by reconfigure(); its poll interval is mirrored in poll_ns_ for the hot
  // path, which reads it without the lock.
  LedgerConfig config_ GUARDED_BY(mutex_);
  std::atomic<TimeNs> poll_ns_{0};
  Scheduler scheduler_ GUARDED_BY(mutex_);
  std::vector<DeviceInfo> devices_ GUARDED_BY(mutex_);  // the last reading
  // For each device, each holder pid there: how many leases it holds, their sum and what it
  // uses (attribute_locked). A short flat list: a device has few holders, and it allocates
  // nothing once grown.
  std::vector<std::vector<HolderUse>> holders_ GUARDED_BY(mutex_);
  std::unordered_map<std::string, LeaseTrack, JobIdHash, std::equal_to<>> tracks_
      GUARDED_BY(mutex_);
  const std::shared_ptr<state::KindHistory> history_;  // null: no history kept
  const std::string history_note_;
  EventHandler on_event_ GUARDED_BY(mutex_);
  std::function<void(const RevokeNotice&)> on_revoke_ GUARDED_BY(mutex_);
  RevocationDeadlines revocations_ GUARDED_BY(mutex_);  // leases being revoked
  Signaller signaller_ GUARDED_BY(mutex_);
  // Whether the housekeeper sleeps with no wake-up time (nothing held, nothing waiting): a
  // grant must wake it so that the lease is measured every poll interval.
  bool housekeeper_idle_ GUARDED_BY(mutex_) = false;
  // The ancestors of each process the last reading listed: a holder's children count as it.
  Ancestry ancestors_ GUARDED_BY(mutex_);
  TimeNs last_refresh_ GUARDED_BY(mutex_) = 0;
  // A copy of last_refresh_ that the hot path reads without the lock, to decide whether a
  // refresh is due.
  std::atomic<TimeNs> last_refresh_seen_{0};
  std::atomic<TimeNs> wall_offset_{0};                                // see wall_time()
  std::unordered_map<std::string, Done> pending_ GUARDED_BY(mutex_);  // waiters' callbacks
  LedgerStats stats_ GUARDED_BY(mutex_);  // the counters; the histograms are below
  DurationHistogram hold_times_ GUARDED_BY(mutex_);
  DurationHistogram wait_times_ GUARDED_BY(mutex_);
  std::function<std::optional<std::uint64_t>(int)> own_usage_ GUARDED_BY(mutex_);
  bool stopping_ GUARDED_BY(mutex_) = false;
  std::condition_variable housekeeper_cv_;
  std::thread housekeeper_;
};

}  // namespace gpumgr::core
