// Scheduler: the ledger's decision core. It holds the accounting of every device, the active
// leases and the wait queue, and decides who starts where. It knows no threads and no real
// clock: every call passes the current time, so that the in-process ledger (steady clock),
// the daemon (through that ledger) and `gpumgr simulate` (a virtual clock) run this same
// code.
//
// Not thread-safe: its owner serialises every call (LocalLedger holds its mutex).
//
// Rules (docs/scheduling.md explains them in full):
// - Admission: a lease of r bytes fits device d when r <= admissible_d = capacity_d -
//   leased_d - overuse_d - foreign_d and fewer than max_concurrent_jobs leases are active
//   (overuse_d: what holders use beyond their leases, docs/accounting.md).
// - Order: higher priority first. Within a priority, with fair share (the default), users
//   go by their recent use (FairShare: decayed GiB-seconds leased), least first, then by
//   arrival, each user's own waiters first come, first served; a user whose earliest waiter
//   there has waited kAgedHalfLives half-lives goes by arrival ahead of the others (the bound
//   on waiting, docs/scheduling.md). Without fair share: first come, first served.
// - Quotas (QuotaBook): a waiter starts only when its lease keeps its user and the user's
//   groups within max_vram and max_jobs; until then it waits, and it neither is the head
//   nor reserves anything, so other users' waiters pass it. A user's later waiters start
//   only within the room its earliest one leaves (they would take what it waits for).
// - Backfill (the default queue policy): until the head of the queue has waited
//   reserve_after_holds mean hold times, every waiter that fits starts (as greedy). Then the
//   head reserves the devices where it will fit soonest (the smallest shortfall). A later
//   job may start ahead of it only on devices the head has not reserved, or on a reserved
//   one within the headroom the head will never need there (capacity - outside use - its
//   request - earlier such backfills), so that nothing placed after the reservation can
//   delay it: the head starts once the leases on its reserved devices at that moment end.
//   Multi-GPU waiters behind a reserving head reserve devices too, in queue order (a gang
//   needs several devices drained at once, which backfill would otherwise keep refilling).
//   Duration backfill: a waiter whose kind has a reliable expected hold may also start on
//   the head's reserved devices where the head does not fit yet, when it is expected to
//   end before the head's expected start (from the expected ends of the leases there).
// - FIFO: nothing starts while an earlier job waits.
// - Greedy: no reservation; every waiter that fits anywhere starts, in queue order.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "core/fair_share.h"
#include "core/fit_index.h"
#include "core/quota_book.h"
#include "gpumgr/ledger.h"
#include "gpumgr/status.h"

namespace gpumgr::core {

// Nanoseconds on the owner's clock (steady clock, or a virtual one).
using TimeNs = std::int64_t;

// The time from `start` to `end`, never negative: the in-process ledger's clock
// (util/fast_clock.h) may step back by microseconds when it is re-anchored, and a hold or a
// wait is never shorter than nothing.
inline TimeNs elapsed_ns(TimeNs start, TimeNs end) { return end > start ? end - start : 0; }

// Whether a request may be placed on device `i`: its pinned device, one of its allowed
// devices, or any device. Any thread may call it.
inline bool may_use(const LeaseRequest& request, std::size_t i) {
  if (request.device >= 0) return static_cast<std::size_t>(request.device) == i;
  const std::vector<int>& only = request.allowed_devices;
  return only.empty() || std::find(only.begin(), only.end(), static_cast<int>(i)) != only.end();
}

// Checks a job kind as job ids are checked: not empty, at most 256 bytes, no control
// characters. Any thread may call it.
Status check_kind(std::string_view kind);
// Checks a resident's name (LeaseRequest::resident): not empty, at most 256 bytes, no
// control characters. Any thread may call it.
Status check_resident_name(std::string_view name);

struct Holder {
  std::uint32_t pid = 0;
  std::uint32_t uid = 0;
};

struct SchedulerConfig {
  int max_concurrent_jobs = 3;
  PlacementPolicy placement = PlacementPolicy::kBestFit;
  QueuePolicy queue = QueuePolicy::kBackfill;
  // Backfill only: the head reserves devices once it has waited this many mean hold times
  // (the running mean over released leases); before that the queue is served greedily. 0:
  // the head reserves at once.
  double reserve_after_holds = 2;
  // Backfill only: a waiter of a known kind may also start on the head's reserved devices
  // where the head does not fit yet, when it is expected to end before the head is expected
  // to start (EASY backfilling).
  // Expectations are the scheduler's own, learned from releases: a kind's expected hold is
  // the mean of its recent holds plus one mean absolute deviation, known once three were
  // seen and while the deviation is at most 40% of the mean; a lease of unknown kind, or
  // one past its expected end, is expected to end at any moment.
  bool duration_backfill = true;
  // Fair share: within a priority, users go by their recent use, least first (see Order
  // above); false: first come, first served. The half-life of that use, in nanoseconds.
  bool fair_share = true;
  TimeNs fair_share_half_life = FairShare::kDefaultHalfLife;
};

// A waiter whose user's earliest waiter at its priority has waited this many fair-share
// half-lives is ordered by arrival, ahead of users ordered by use: fair share reorders, but
// never postpones a user without bound.
inline constexpr int kAgedHalfLives = 4;

// One user's figures for status displays: what it holds against its quota, and its
// fair-share use.
struct UserAccount {
  std::uint32_t uid = 0;
  std::uint64_t leased_bytes = 0;  // VRAM leased: each lease's size times its devices
  std::uint64_t jobs = 0;          // active leases
  std::uint64_t waiting = 0;       // waiting requests
  // The tightest quota that applies (its own, the default's, its groups'); none: no limit.
  std::optional<std::uint64_t> max_vram_bytes;
  std::optional<std::uint64_t> max_jobs;
  double usage_gib_s = 0;  // fair-share use: decayed GiB-seconds leased
};

// A lease that was granted by a scheduling pass (or at once).
struct Grant {
  std::string job_id;
  std::vector<int> devices;
  std::uint64_t bytes = 0;
  TimeNs requested_at = 0;
  TimeNs granted_at = 0;
};

// A waiting request that left the queue without a lease.
struct Dropped {
  std::string job_id;
  Status reason;  // kTimedOut, kCancelled, kNeverFits (devices changed)
};

// What release() returns: the released lease, for statistics and cleanup. `devices` and
// `kind` stay in the released table entry, which the scheduler keeps for its next grant:
// they are valid until the scheduler next changes.
struct Released {
  std::span<const int> devices;
  std::uint64_t bytes = 0;
  TimeNs held_ns = 0;
  Holder holder;
  std::string_view kind;
  std::uint64_t lease_id = 0;
};

// Whether and how a lease may be revoked (LeaseRequest::preemptible, ::resident).
enum class Revocable { kNo, kPreemptible, kResident };

// Why a lease was revoked: a resident gave way, or a preemptible job was preempted.
enum class RevokeCause { kResident, kPreempted };
std::string_view revoke_cause_name(RevokeCause cause);  // "resident", "preempted"

// A revocation the scheduler decided (docs/scheduling.md, "Revocable leases"): the owner
// tells the holder, and the lease stays active (its memory counted) until it is released.
struct Revocation {
  std::string job_id;  // the lease revoked
  std::uint64_t lease_id = 0;
  std::string for_job;  // the waiter it makes room for; empty for an explicit revoke()
  RevokeCause cause = RevokeCause::kPreempted;
};

// A lease the scheduler holds, keyed by job id.
struct ActiveLease {
  std::uint64_t lease_id = 0;  // unique per scheduler, from 1
  std::vector<int> devices;
  std::uint64_t bytes = 0;
  int priority = 0;
  Holder holder;
  std::string command;
  std::string kind;  // LeaseRequest::kind
  TimeNs requested_at = 0;
  TimeNs granted_at = 0;
  // When the lease is expected to end (granted_at + its kind's expected hold then), or
  // kUnknownEnd when its kind has no estimate.
  TimeNs expected_end = 0;
  int kind_id = -1;  // the scheduler's number for `kind`; -1: none
  Revocable revocable = Revocable::kNo;
  std::string resident;  // LeaseRequest::resident
  // Residents: when the model was last used (touch()); the grant time until then. Least
  // recently used residents are revoked first.
  TimeNs last_used = 0;
  // Residents: the leases running beside it now (LeaseRequest::beside_resident). A resident in
  // use goes after every idle one.
  int users = 0;
  // A lease beside a resident: the resident's name, and its lease id (0 when it was gone by
  // the grant), so that a later resident of the same name is not counted as its model.
  std::string beside;
  std::uint64_t beside_lease_id = 0;
  std::optional<double> revoke_grace_s;  // LeaseRequest::revoke_grace_s
  bool revoking = false;                 // revoked, not yet released
  std::string revoked_for;               // the waiter it was revoked for (it may have left since)
};

// ActiveLease::expected_end of a lease whose kind has no estimate.
inline constexpr TimeNs kUnknownEnd = std::numeric_limits<TimeNs>::min();

// Job ids are looked up by string_view without building a std::string (heterogeneous
// lookup): releases arrive as string_views and this is the hot path. XXH3, which hashes a
// short id in a fraction of std::hash's time.
struct JobIdHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view id) const;
};
using ActiveMap = std::unordered_map<std::string, ActiveLease, JobIdHash, std::equal_to<>>;
// One active lease with its job id (ActiveMap's element).
using ActiveEntry = ActiveMap::value_type;

class Scheduler {
 public:
  Scheduler(SchedulerConfig config, std::size_t device_count);

  const SchedulerConfig& config() const { return config_; }
  std::size_t device_count() const { return devices_.size(); }

  // Sets what the hardware says about a device. Call schedule() afterwards: more room may
  // let waiters start.
  void set_device(int device, std::uint64_t capacity, std::uint64_t foreign, bool healthy);
  // Sets what lease holders on a device use beyond their leases (the sum over leases of
  // max(0, used - leased)): it takes room from everyone else. Call schedule() afterwards:
  // less overuse may let waiters start.
  void set_overuse(int device, std::uint64_t overuse);

  // Checks a request against the devices and the active and waiting jobs, changing nothing:
  // bad fields (empty id, 0 bytes, gpus < 1 or > devices, unknown pinned device),
  // kAlreadyExists, kNeverFits.
  Status check(const LeaseRequest& request) const;
  // check() without the look-up of the job id among active and waiting jobs.
  Status check_fields(const LeaseRequest& request) const;
  // The size part of check(): bytes, gpus, pinned device, allowed devices and kNeverFits.
  Status check_shape(std::uint64_t bytes, int gpus, int device,
                     std::span<const int> allowed = {}) const;

  // Starts a job now if it fits without delaying anyone who waits (as a backfill would);
  // kResourceExhausted otherwise. Runs check() first. The new lease is returned as the
  // scheduler holds it (valid until the scheduler next changes), so that the caller reads it
  // without another lookup or a copy of its device list.
  // A request beside a resident goes only on the resident's devices (beside_devices()).
  StatusOr<const ActiveEntry*> try_start(const LeaseRequest& request, Holder holder, TimeNs now);

  // Queues a request (after check()); it starts at once if the queue allows. The grants of
  // the pass this triggers are returned (the request's own, if it started, among them).
  // `requested_at` (default: now) is when it was first asked for: a waiter restored after a
  // restart keeps its waiting time (its queue place is the order of enqueue calls).
  StatusOr<std::vector<Grant>> enqueue(const LeaseRequest& request, Holder holder, TimeNs now,
                                       std::optional<TimeNs> deadline,
                                       std::optional<TimeNs> requested_at = std::nullopt);

  // Releases an active lease. kNotFound for an unknown job, or when `lease_id` is not 0 and
  // the job's lease is another one (that lease was released and the id reused);
  // kPermissionDenied when `requester_uid` is given, is not root (0) and is not the holder's
  // uid. Call schedule() afterwards.
  StatusOr<Released> release(std::string_view job_id, TimeNs now,
                             const std::optional<std::uint32_t>& requester_uid = std::nullopt,
                             std::uint64_t lease_id = 0);

  // Removes a waiting request. kNotFound when no such job waits. Call schedule() afterwards
  // (the head may have changed).
  Status cancel(std::string_view job_id);

  // Removes the waiters whose deadline is <= now.
  std::vector<Dropped> expire(TimeNs now);
  // The earliest deadline among waiters, if any.
  std::optional<TimeNs> next_deadline() const;

  // Grants every waiter that may start now, in order, and returns those grants. Then
  // decides the revocations that waiters which cannot fit otherwise need (take_revocations).
  std::vector<Grant> schedule(TimeNs now);

  // Revocable leases (src/core/revocation.cpp; docs/scheduling.md, "Revocable leases").
  // The revocations decided since the last call, in the order decided. The leases stay
  // active, marked revoking, until their owner releases them.
  std::vector<Revocation> take_revocations();
  // A resident lease was used now: it becomes the most recently used. kNotFound for no such
  // lease, kFailedPrecondition for a lease that is not resident or is being revoked.
  Status touch(std::string_view job_id, TimeNs now);
  // Revokes a revocable lease on request (no waiter needs it): kNotFound, kPermissionDenied
  // when `requester_uid` is given, is not root and is not the holder's, kFailedPrecondition
  // for a lease that is not revocable or is already being revoked.
  StatusOr<Revocation> revoke(std::string_view job_id,
                              const std::optional<std::uint32_t>& requester_uid = std::nullopt);
  // How many active leases are revocable, and how many of them are being revoked.
  int revocable_count() const { return revocable_count_; }
  int revoking_count() const { return revoking_count_; }

  // Takes back a lease that an earlier daemon granted (a restart, docs/daemon.md): the job
  // holds `request.bytes` on each of `devices` again, as it did, whether or not it would fit
  // now and beyond the concurrency limit, since the holder is using that memory either way.
  // kInvalidArgument for no devices, a repeated or unknown device, or 0 bytes;
  // kAlreadyExists when the job id is active or waiting. `requested_at` and `granted_at`
  // keep the lease's wait and hold times. Adopting only takes room: no pass is needed.
  StatusOr<const ActiveEntry*> adopt(const LeaseRequest& request, std::span<const int> devices,
                                     Holder holder, TimeNs requested_at, TimeNs granted_at);

  // Learns hold times of `kind` (oldest first, in seconds) as if leases of that kind had been
  // released here after holding that long: the daemon seeds them from its history of job
  // kinds at start, so that duration backfill and aging work from its first minute rather
  // than after three releases of each kind. Negative and non-finite times are skipped.
  void learn_holds(std::string_view kind, std::span<const double> hold_seconds);

  // Read access for snapshots and tests.
  struct DeviceState {
    std::uint64_t capacity = 0;
    std::uint64_t leased = 0;
    std::uint64_t foreign = 0;
    std::uint64_t overuse = 0;
    std::uint64_t peak_leased = 0;
    int leases = 0;
    bool healthy = true;
    std::uint64_t admissible() const {
      // Each term is at most a device's memory (or a sum of leases that fit it): no overflow.
      const std::uint64_t taken = leased + overuse + foreign;
      return taken >= capacity ? 0 : capacity - taken;
    }
  };
  struct Waiter {
    LeaseRequest request;
    Holder holder;
    TimeNs requested_at = 0;
    std::optional<TimeNs> deadline;
    std::uint64_t seq = 0;
    int kind_id = -1;  // see ActiveLease::kind_id
  };

  const DeviceState& device(int index) const {
    return devices_.at(static_cast<std::size_t>(index));
  }
  const ActiveMap& active() const { return active_; }
  // The active lease of a job, or null.
  const ActiveEntry* find_active(std::string_view job_id) const {
    const auto it = active_.find(job_id);
    return it == active_.end() ? nullptr : &*it;
  }
  int active_count() const { return static_cast<int>(active_.size()); }
  std::size_t waiting_count() const { return queue_.size(); }
  // Waiters in queue order (the head first).
  std::vector<const Waiter*> waiters() const;
  bool is_waiting(std::string_view job_id) const;
  // Devices held back for the head of the queue (empty when none).
  const std::vector<int>& reserved_devices() const { return reserved_; }
  // Devices that no waiter has reserved: where a backfilled job may start. Sets
  // `gang_can_start` when a multi-GPU waiter could start now on devices no earlier waiter
  // reserved (false after a pass: the pass would have started it).
  std::vector<bool> backfill_devices(bool* gang_can_start = nullptr) const;

  // Changes the concurrency limit (a reload of the daemon's configuration; n >= 1). Lowering
  // it revokes no lease: no new one starts until the active count is below it. Raising it:
  // call schedule() afterwards.
  void set_max_concurrent_jobs(int n);

  // Quotas (docs/config.md): installs the limits, at start and at each reload (see
  // QuotaBook); `groups` says which groups a uid is in. A lowered quota ends no lease and
  // changes no waiter's place; waiters that can never fit the new limits leave the queue
  // (kQuotaExceeded) and are returned. Call schedule() afterwards: raised limits let waiters
  // start.
  std::vector<Dropped> set_quotas(QuotaConfig config, QuotaBook::GroupResolver groups);
  const QuotaBook& quotas() const { return quotas_; }
  // Why a waiter waits for its quota ("uid 1000 holds 6 GiB of its 8 GiB ..."), empty when
  // its quota lets it start.
  std::string quota_wait(const Waiter& waiter) const;
  // Turns fair share on or off and sets its half-life, from `now` on (a reload). Call
  // schedule() afterwards: the order may have changed.
  void set_fair_share(bool on, TimeNs half_life, TimeNs now);
  const FairShare& usage() const { return usage_; }
  // Each user with leases or waiters, or with a quota table of its own, by uid.
  std::vector<UserAccount> user_accounts(TimeNs now) const;

 private:
  // Queue order: higher priority first, then arrival.
  struct Key {
    int neg_priority;
    std::uint64_t seq;
    friend auto operator<=>(const Key&, const Key&) = default;
  };
  // Waiters that compete for the same kind of placement share a fit index.
  struct ClassKey {
    int gpus;
    int device;   // pinned device or -1
    int kind_id;  // -1: no kind (duration backfill weighs a class by its kind's estimate)
    std::vector<int> allowed;  // LeaseRequest::allowed_devices (empty: any)
    friend auto operator<=>(const ClassKey&, const ClassKey&) = default;
  };
  // One user's waiters at one priority: their order, and their fit indexes by class.
  struct UserBucket {
    // Its waiters here by seq (arrival order: the first is the user's earliest here), with
    // what ranking, quotas and its fit indexes read of them without a look into the queue.
    struct Entry {
      TimeNs requested_at;
      std::uint64_t total;  // lease_total(): size times GPUs
      std::uint64_t bytes;  // per device
      ClassKey cls;
    };
    std::map<std::uint64_t, Entry> seqs;
    // Built the first time a pass needs them (users ranked, or quotas), then kept up: a
    // single user without quotas (the common host) pays for none.
    mutable std::map<ClassKey, FitIndex> classes;
    mutable bool indexed = false;
    int rank = 0;  // the user's place among this priority's users (fair share); 0 without
    const std::map<ClassKey, FitIndex>& indexes() const {
      if (!indexed) {
        for (const auto& [seq, e] : seqs) classes[e.cls].push_back(seq, e.bytes);
        indexed = true;
      }
      return classes;
    }
  };
  // The waiters of one priority: every user's together by class (does anything fit, and the
  // earliest that does: arrival order), and each user's own (fair share, quotas).
  struct Level {
    std::map<ClassKey, FitIndex> classes;
    std::map<std::uint32_t, UserBucket> users;  // by uid
    std::vector<std::uint32_t> order;  // users by rank at the last ranking; empty: unranked
  };
  // A waiter's place in the queue's order: priority, its user's rank there, arrival.
  struct Rank {
    int neg_priority;
    int user_rank;
    std::uint64_t seq;
    friend auto operator<=>(const Rank&, const Rank&) = default;
  };

  // The devices a request would get now among `allowed`, by the placement policy; empty
  // when it does not fit.
  std::vector<int> place(const LeaseRequest& request, const std::vector<bool>& allowed) const;
  // The one device a single-GPU request would get now among `allowed`, or -1.
  int place_one(const LeaseRequest& request, const std::vector<bool>& allowed) const;
  // The largest k-th admissible figure among allowed devices, for a fit-index query.
  std::uint64_t threshold(const ClassKey& cls, const std::vector<bool>& allowed) const;
  // Adds an active entry for `job_id`, reusing a released one where one is spare (see
  // spare_entries_); nullptr when the job id is already active. grant() fills it in.
  ActiveEntry* insert_active(std::string_view job_id);
  // try_start() of a request already confined to its resident's devices (or beside none).
  StatusOr<const ActiveEntry*> start_now(const LeaseRequest& request, Holder holder, TimeNs now);
  // Fills in a new entry whose devices are already set, and charges them.
  ActiveEntry& grant(ActiveEntry& entry, const LeaseRequest& request, Holder holder,
                     TimeNs requested_at, TimeNs now);
  // kAlreadyExists when the job id is active or waiting, else `failure`: try_start's cold
  // paths report a duplicate id first, as check() would have.
  Status duplicate_or(std::string_view job_id, Status failure) const;
  void remove_waiter(std::map<Key, Waiter>::iterator it);
  // The tenancy rules (scheduler_tenants.cpp). The head of the queue: the first waiter in
  // order whose user's quota lets it start (queue_.end() when none may). Reads held_: call
  // find_held() first where quotas may have changed.
  std::map<Key, Waiter>::const_iterator head() const;
  // Among the classes of `level` in fitting_ (each with its limit), the first waiter in order
  // of a user whose quota lets it start, within what that quota leaves.
  std::optional<Rank> first_fitting_by_user(int neg_priority, const Level& level) const;
  // Orders the users of each priority by their use at `now` (fair share).
  void rank_users(TimeNs now);
  // Fills held_ with the users whose earliest waiter their quota keeps waiting.
  void find_held() const;
  bool held(std::uint32_t uid) const { return held_.count(uid) != 0; }
  Rank rank_of(const Key& key) const;
  // The VRAM (size times devices) a lease of this request holds.
  static std::uint64_t lease_total(std::uint64_t bytes, std::size_t devices) {
    return bytes * static_cast<std::uint64_t>(devices);
  }
  void charge(const ActiveLease& lease, TimeNs now);
  void discharge(const ActiveLease& lease, TimeNs now);
  // Chooses the head's reserved devices (sticky while they stay valid); fills allowed_ with
  // the devices others may use.
  void update_reservation();
  // Multi-GPU waiters after the head, in queue order, each reserve the devices where they
  // will fit soonest among those not reserved before them (marking them in `allowed`). The
  // first one that fits now on unreserved devices stops the walk and is returned, with those
  // devices in gang_allowed_.
  std::optional<Key> reserve_for_gangs(const Key& head, std::vector<bool>& allowed,
                                       std::vector<bool>* gang_allowed) const;
  bool limit_reached() const { return active_count() >= config_.max_concurrent_jobs; }
  // Whether this pass serves the queue greedily (no reservations): always under kGreedy;
  // under kBackfill while the head has waited less than reserve_after_holds mean holds.
  bool greedy_now(TimeNs now) const;
  // What a single-GPU backfill may take on a device reserved for the head without delaying
  // it (0 on other devices): capacity - outside use - the head's request - what earlier
  // backfills hold there, at most the admissible memory; where the head fits already, what
  // is admissible beyond its request.
  std::uint64_t headroom(int device) const;
  // The largest headroom a waiter of `cls` may use (0 for multi-GPU classes).
  std::uint64_t headroom_threshold(const ClassKey& cls) const;
  // The reserved device (best fit by headroom) a single-GPU request may backfill, or -1.
  int place_in_headroom(const LeaseRequest& request) const;
  std::uint64_t capacity_rank(int gpus) const;  // the gpus-th largest capacity
  // The scheduler's number for a kind (-1 for none, or once kMaxKinds are known).
  int intern_kind(std::string_view kind);
  // One hold of `held_ns` of a kind (-1: none) in the running statistics.
  void observe_hold(int kind_id, double held_ns);
  // The expected hold of a kind, or nullopt when too few of its leases were released.
  std::optional<TimeNs> expected_hold(int kind_id) const;
  // When the head is expected to fit on all of its reserved devices, from the expected ends
  // of the leases there (a lease of unknown kind, or past its expected end, may end at any
  // moment: now); `now` when that cannot be told (memory held outside leases).
  TimeNs head_shadow(TimeNs now) const;
  // Recomputes fit_bytes_[device] after its state changed.
  void update_fit(std::size_t device) {
    const DeviceState& d = devices_[device];
    fit_bytes_[device] = d.healthy ? d.admissible() : 0;
  }

  // Revocations (revocation.cpp): after a pass, picks the leases to revoke for waiters that
  // cannot fit otherwise and queues them for take_revocations().
  void plan_revocations();
  // kInvalidArgument for a bad resident name or a lease both preemptible and resident,
  // kAlreadyExists for a resident name in use.
  Status check_revocable(const LeaseRequest& request) const;
  // Keeps the revocable counts and resident names when a lease is granted or released.
  void note_revocable(const ActiveEntry& entry, int delta);
  // A request beside a resident (LeaseRequest::beside_resident): the allowed devices it is
  // confined to, the resident's devices within its own allowed devices (empty when it is
  // pinned to one of them: the pin confines it). kInvalidArgument for a bad name, a request
  // that is itself resident, or a pin or allowed devices away from the resident; kNotFound
  // for no such resident, kFailedPrecondition for one being revoked.
  StatusOr<std::vector<int>> beside_devices(const LeaseRequest& request) const;
  // try_start() of a request beside a resident: confined to its devices.
  StatusOr<const ActiveEntry*> try_start_beside(const LeaseRequest& request, Holder holder,
                                                TimeNs now);
  // Lease `lease`, beside resident `name`, was granted now: the resident was used (as
  // touch()) and has one more user.
  void use_beside(ActiveLease& lease, std::string_view name, TimeNs now);
  // Lease `lease` ends: the resident it ran beside, if still there, has one user fewer.
  void leave_beside(const ActiveLease& lease);

  SchedulerConfig config_;
  std::vector<DeviceState> devices_;
  // The largest lease each device can take now: its admissible bytes, or 0 while it is
  // unhealthy (a lease asks for at least 1 byte). Kept beside devices_ so that placing a
  // lease scans one small array.
  std::vector<std::uint64_t> fit_bytes_;
  ActiveMap active_;
  std::map<Key, Waiter> queue_;
  std::unordered_map<std::string, Key, JobIdHash, std::equal_to<>> waiting_index_;
  std::set<std::pair<TimeNs, Key>> deadlines_;
  std::map<int, Level> fit_;  // by -priority, then user, then class
  std::uint64_t next_seq_ = 0;
  std::uint64_t last_lease_id_ = 0;
  // Entries of released leases, node and all, for the next grants: a steady stream of
  // leases then allocates no table node and no device list (and copies a job id into a
  // string that already has room for it).
  std::vector<ActiveMap::node_type> spare_entries_;
  std::size_t next_replaced_spare_ = 0;  // which kept entry a release replaces when all are kept

  std::string reserved_for_;
  std::vector<int> reserved_;
  std::vector<bool> allowed_;  // devices not reserved for the head
  // For each device reserved for the head: the last lease id granted before it was reserved
  // (later ids are backfills), and the bytes those backfills hold there now.
  std::vector<std::uint64_t> reserved_mark_;
  std::vector<std::uint64_t> reserved_extra_;
  const std::vector<bool> all_devices_;         // every device allowed
  std::vector<std::uint64_t> capacities_desc_;  // capacities, largest first
  std::set<Key> gang_waiters_;                  // waiting multi-GPU requests, in queue order
  // The running mean of hold times over released leases (the last kHoldWindow weigh most).
  double mean_hold_ns_ = 0;
  std::uint64_t holds_seen_ = 0;

  bool last_pass_greedy_ = false;  // what backfill_devices() reports

  // Hold times per job kind, learned from releases (duration backfill).
  struct KindStats {
    double mean_ns = 0;
    double deviation_ns = 0;  // mean absolute deviation from the running mean
    std::uint64_t holds = 0;
  };
  std::unordered_map<std::string, int, JobIdHash, std::equal_to<>> kind_ids_;
  std::vector<KindStats> kind_stats_;

  int revocable_count_ = 0;
  int revoking_count_ = 0;
  // Resident names of active leases, and the job that holds each.
  std::unordered_map<std::string, std::string, JobIdHash, std::equal_to<>> residents_;
  std::vector<Revocation> revocations_;  // decided, not yet taken
  // Tenancy. The book's look-ups cache group membership (hence mutable).
  mutable QuotaBook quotas_;
  FairShare usage_;
  // Whether the users of some priority are ranked by use (ranks other than 0 exist).
  bool ranked_ = false;
  mutable std::unordered_set<std::uint32_t> held_;     // find_held()'s answer
  mutable std::unordered_set<std::uint32_t> seen_;     // find_held()'s scratch
  std::unordered_map<std::uint32_t, double> use_now_;  // rank_users()'s scratch
  // A pass's classes that fit at one priority, with their limits (scratch).
  std::vector<std::pair<const ClassKey*, std::uint64_t>> fitting_;
  std::uint64_t host_capacity_ = 0;
};

}  // namespace gpumgr::core
