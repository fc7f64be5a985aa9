#include "core/local_ledger.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "core/accounting.h"
#include "util/fast_clock.h"

namespace gpumgr::core {
namespace {
using Calls = std::vector<std::function<void()>>;

void run_all(Calls& calls) {
  for (auto& call : calls) call();
  calls.clear();
}
}  // namespace

void DurationHistogram::observe(TimeNs duration) {
  // The clock may step back a little (see util/fast_clock.h): a duration is never negative.
  duration = std::max<TimeNs>(duration, 0);
  const auto bucket = static_cast<std::size_t>(
      std::lower_bound(kBounds.begin(), kBounds.end(), duration) - kBounds.begin());
  ++counts_[bucket];
  min_ = count_ == 0 ? duration : std::min(min_, duration);
  max_ = std::max(max_, duration);
  ++count_;
  constexpr std::uint64_t kNsPerSecond = 1'000'000'000;
  sum_nanoseconds_ += static_cast<std::uint64_t>(duration);
  if (sum_nanoseconds_ >= kNsPerSecond) {
    sum_seconds_ += sum_nanoseconds_ / kNsPerSecond;
    sum_nanoseconds_ %= kNsPerSecond;
  }
}

Histogram DurationHistogram::to_histogram() const {
  Histogram h;
  for (const TimeNs b : kBounds) h.bounds.push_back(static_cast<double>(b) / 1e9);
  h.counts.assign(counts_.begin(), counts_.end());
  for (std::size_t i = 1; i < h.counts.size(); ++i) h.counts[i] += h.counts[i - 1];
  h.count = count_;
  h.sum = static_cast<double>(sum_seconds_) + static_cast<double>(sum_nanoseconds_) / 1e9;
  h.min = static_cast<double>(min_) / 1e9;
  h.max = static_cast<double>(max_) / 1e9;
  return h;
}

TimeNs LocalLedger::now_ns() { return fast_steady_ns(); }

TimeNs LocalLedger::wall_offset_now() {
  const auto wall = std::chrono::duration_cast<std::chrono::nanoseconds>(
      std::chrono::system_clock::now().time_since_epoch());
  return wall.count() - now_ns();
}

std::chrono::system_clock::time_point LocalLedger::wall_time(TimeNs steady) const {
  const auto ns = std::chrono::nanoseconds(steady + wall_offset_.load(std::memory_order_relaxed));
  return std::chrono::system_clock::time_point(
      std::chrono::duration_cast<std::chrono::system_clock::duration>(ns));
}

TimeNs LocalLedger::to_ns(SteadyTime t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

StatusOr<std::shared_ptr<LocalLedger>> LocalLedger::create(std::shared_ptr<DeviceBackend> backend,
                                                           const LedgerConfig& config,
                                                           int pinned_device) {
  if (!backend) return InvalidArgument("no device backend given");
  if (Status s = validate_config(config); !s.ok()) return s;
  auto devices = backend->query();
  if (!devices.ok()) return devices.status();
  if (devices->empty())
    return Unavailable("the " + backend->info().name + " backend has no devices");
  if (pinned_device < -1 || pinned_device >= static_cast<int>(devices->size())) {
    return NotFound("device " + std::to_string(pinned_device) + " does not exist; devices are 0.." +
                    std::to_string(devices->size() - 1));
  }
  return std::shared_ptr<LocalLedger>(
      new LocalLedger(std::move(backend), config, pinned_device, std::move(devices).value()));
}

LocalLedger::LocalLedger(std::shared_ptr<DeviceBackend> backend, const LedgerConfig& config,
                         int pinned_device, std::vector<DeviceInfo> devices)
    : backend_(std::move(backend)),
      config_(config),
      pinned_device_(pinned_device),
      backend_info_(backend_->info()),
      self_{static_cast<std::uint32_t>(::getpid()), static_cast<std::uint32_t>(::getuid())},
      scheduler_(SchedulerConfig{config.max_concurrent_jobs, config.placement, config.queue},
                 devices.size()) {
  {
    MutexLock lock(mutex_);
    holders_.resize(devices.size());
    ancestors_ = read_ancestry(devices);
    apply_devices_locked(std::move(devices));
    last_refresh_ = now_ns();
    last_refresh_seen_.store(last_refresh_, std::memory_order_relaxed);
    wall_offset_.store(wall_offset_now(), std::memory_order_relaxed);
  }
  housekeeper_ = std::thread([this] { housekeeper_loop(); });
}

LocalLedger::~LocalLedger() {
  Calls calls;
  {
    MutexLock lock(mutex_);
    stopping_ = true;
    for (auto& [job_id, done] : pending_) {
      calls.push_back([d = std::move(done)] {
        d(Status(ErrorCode::kUnavailable, "the ledger is shutting down"));
      });
    }
    pending_.clear();
  }
  housekeeper_cv_.notify_all();
  housekeeper_.join();
  run_all(calls);
}

void LocalLedger::apply_devices_locked(std::vector<DeviceInfo> devices) {
  const std::size_t n = std::min(devices.size(), scheduler_.device_count());
  for (std::size_t i = 0; i < n; ++i) {
    const int d = static_cast<int>(i);
    scheduler_.set_device(d, capacity_bytes(devices[i].total_bytes, config_.memory_limit),
                          foreign_bytes_locked(d, devices[i]), devices[i].healthy);
  }
  devices_ = std::move(devices);
}

void LocalLedger::apply_backend_failure_locked(const Status& failure) {
  // The driver itself stopped answering: keep the last reading but choose no device until
  // it answers again.
  for (std::size_t i = 0; i < devices_.size(); ++i) {
    devices_[i].healthy = false;
    devices_[i].health_reason = "backend failure: " + failure.message();
    const auto& st = scheduler_.device(static_cast<int>(i));
    scheduler_.set_device(static_cast<int>(i), st.capacity, st.foreign, false);
  }
}

std::uint64_t LocalLedger::foreign_bytes_locked(int device, const DeviceInfo& info) const {
  std::uint64_t holders_known_usage = 0;
  if (!info.processes_known && own_usage_ && holds_lease_on_locked(device, self_.pid)) {
    holders_known_usage = own_usage_(device).value_or(0);
  }
  std::vector<bool> is_holder;
  is_holder.reserve(info.processes.size());
  for (const auto& p : info.processes) is_holder.push_back(holds_lease_on_locked(device, p.pid));
  return foreign_bytes(info, is_holder, holders_known_usage);
}

void LocalLedger::refresh_foreign_locked(int d) {
  const auto i = static_cast<std::size_t>(d);
  if (i >= devices_.size()) return;
  // Nothing a change of holders could move: no processes listed, or none known and no figure
  // of our own to subtract.
  const DeviceInfo& info = devices_[i];
  if (info.processes_known ? info.processes.empty() : !own_usage_) return;
  const auto& st = scheduler_.device(d);
  scheduler_.set_device(d, st.capacity, foreign_bytes_locked(d, info), st.healthy);
}

void LocalLedger::change_holder_locked(std::span<const int> devices, std::uint32_t pid, int delta) {
  for (const int d : devices) {
    auto& counts = holders_[static_cast<std::size_t>(d)];
    auto it = std::find_if(counts.begin(), counts.end(),
                           [pid](const HolderCount& h) { return h.pid == pid; });
    if (it == counts.end()) {
      if (delta > 0) counts.push_back(HolderCount{pid, delta});
    } else {
      it->leases += delta;
      if (it->leases <= 0) {
        // Order does not matter; keep the vector's capacity. (No self-copy when it is the
        // last: that load would wait for the store just made to it.)
        if (it + 1 != counts.end()) *it = counts.back();
        counts.pop_back();
      }
    }
    // The holder's own memory there is now covered by its lease, or no longer is.
    refresh_foreign_locked(d);
  }
}

bool LocalLedger::holds_lease_on_locked(int device, std::uint32_t pid) const {
  const auto& holders = holders_[static_cast<std::size_t>(device)];
  if (holders.empty()) return false;
  auto holds = [&holders](std::uint32_t p) {
    return std::any_of(holders.begin(), holders.end(),
                       [p](const HolderCount& h) { return h.pid == p; });
  };
  if (holds(pid)) return true;
  // A holder's descendants are covered by its lease.
  const auto it = ancestors_.find(pid);
  return it != ancestors_.end() && std::any_of(it->second.begin(), it->second.end(), holds);
}

Status LocalLedger::refresh() {
  MutexLock serial(refresh_mutex_);
  auto reading = backend_->query();
  // /proc is read here, outside the ledger's lock.
  Ancestry ancestry = reading.ok() ? read_ancestry(reading.value()) : Ancestry{};
  Calls calls;
  {
    MutexLock lock(mutex_);
    if (reading.ok()) {
      ancestors_ = std::move(ancestry);
      apply_devices_locked(std::move(reading).value());
    } else {
      apply_backend_failure_locked(reading.status());
    }
    last_refresh_ = now_ns();
    last_refresh_seen_.store(last_refresh_, std::memory_order_relaxed);
    wall_offset_.store(wall_offset_now(), std::memory_order_relaxed);
    schedule_locked(last_refresh_, calls);
  }
  run_all(calls);
  return reading.ok() ? Status::Ok() : reading.status();
}

TimeNs LocalLedger::refresh_if_stale() {
  const TimeNs poll_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(config_.poll_interval).count();
  const TimeNs now = now_ns();
  if (now - last_refresh_seen_.load(std::memory_order_relaxed) < poll_ns) return now;
  (void)refresh();
  return now_ns();
}

void LocalLedger::set_own_usage_provider(
    std::function<std::optional<std::uint64_t>(int device)> provider) {
  MutexLock lock(mutex_);
  own_usage_ = std::move(provider);
}

LeaseInfo LocalLedger::lease_info_locked(const ActiveEntry& entry) const {
  LeaseInfo info;
  fill_lease_info_locked(entry, info);
  return info;
}

void LocalLedger::fill_lease_info_locked(const ActiveEntry& entry, LeaseInfo& info) const {
  const auto& [job_id, lease] = entry;
  info.job_id.assign(job_id);
  info.devices.assign(lease.devices.begin(), lease.devices.end());
  info.bytes = lease.bytes;
  info.priority = lease.priority;
  info.pid = lease.holder.pid;
  info.uid = lease.holder.uid;
  info.command.assign(lease.command);
  info.granted_at = wall_time(lease.granted_at);
  // A non-blocking acquire never waits: no floating-point division then.
  const TimeNs waited = elapsed_ns(lease.requested_at, lease.granted_at);
  info.waited_s = waited > 0 ? static_cast<double>(waited) / 1e9 : 0.0;
  info.lease_id = lease.lease_id;
}

void LocalLedger::schedule_locked(TimeNs now, Calls& calls) {
  // Nobody waits (the common case on release): a pass would grant nothing.
  if (scheduler_.waiting_count() == 0) return;
  handle_grants_locked(scheduler_.schedule(now), calls);
}

void LocalLedger::record_grant_locked(const ActiveLease& lease) {
  change_holder_locked(lease.devices, lease.holder.pid, +1);
  stats_.active_jobs = scheduler_.active_count();
  stats_.peak_active_jobs = std::max(stats_.peak_active_jobs, stats_.active_jobs);
  wait_times_.observe(elapsed_ns(lease.requested_at, lease.granted_at));
}

void LocalLedger::handle_grants_locked(const std::vector<Grant>& grants, Calls& calls) {
  for (const Grant& g : grants) {
    const ActiveEntry* entry = scheduler_.find_active(g.job_id);
    record_grant_locked(entry->second);
    auto it = pending_.find(g.job_id);
    if (it == pending_.end()) continue;
    calls.push_back(
        [done = std::move(it->second), info = lease_info_locked(*entry)] { done(info); });
    pending_.erase(it);
  }
}

void LocalLedger::finish_dropped_locked(const std::vector<Dropped>& dropped, Calls& calls) {
  for (const Dropped& d : dropped) {
    if (d.reason.code() == ErrorCode::kTimedOut) ++stats_.jobs_timed_out;
    if (d.reason.code() == ErrorCode::kCancelled) ++stats_.jobs_cancelled;
    auto it = pending_.find(d.job_id);
    if (it == pending_.end()) continue;
    calls.push_back([done = std::move(it->second), reason = d.reason] { done(reason); });
    pending_.erase(it);
  }
}

StatusOr<LeaseInfo> LocalLedger::try_acquire(const LeaseRequest& request) {
  return try_acquire_as(request, self_);
}

Status LocalLedger::try_acquire_into(const LeaseRequest& request, LeaseInfo& lease) {
  return try_acquire_into(request, self_, lease);
}

StatusOr<LeaseInfo> LocalLedger::try_acquire_as(const LeaseRequest& request, Holder holder) {
  LeaseInfo lease;
  if (Status s = try_acquire_into(request, holder, lease); !s.ok()) return s;
  return lease;
}

Status LocalLedger::try_acquire_into(const LeaseRequest& request, Holder holder, LeaseInfo& lease) {
  // The time read for the staleness check stamps the grant too: one clock read, not two.
  // It may be a lock wait older than the grant, which only makes the hold look longer.
  const TimeNs now = refresh_if_stale();
  // Copy the request only when pinning changes it: this is the hot path.
  std::optional<LeaseRequest> pinned;
  if (pinned_device_ >= 0 && request.device == -1) {
    pinned = request;
    pinned->device = pinned_device_;
  }
  const LeaseRequest& r = pinned ? *pinned : request;
  MutexLock lock(mutex_);
  if (pinned_device_ >= 0 && r.device != pinned_device_) {
    return InvalidArgument("this manager is pinned to device " + std::to_string(pinned_device_) +
                           "; job asked for device " + std::to_string(r.device));
  }
  auto grant = scheduler_.try_start(r, holder, now);
  if (!grant.ok()) {
    const ErrorCode code = grant.status().code();
    if (code == ErrorCode::kResourceExhausted || code == ErrorCode::kNeverFits) {
      ++stats_.jobs_rejected;
    }
    return grant.status();
  }
  const ActiveEntry& entry = *grant.value();
  record_grant_locked(entry.second);
  fill_lease_info_locked(entry, lease);
  return Status::Ok();
}

void LocalLedger::acquire_async(const LeaseRequest& request, Holder holder,
                                std::optional<SteadyTime> deadline, Done done) {
  refresh_if_stale();
  LeaseRequest r = request;
  if (pinned_device_ >= 0 && r.device == -1) r.device = pinned_device_;
  Calls calls;
  {
    MutexLock lock(mutex_);
    const TimeNs now = now_ns();
    Status bad;
    if (stopping_) {
      bad = Status(ErrorCode::kUnavailable, "the ledger is shutting down");
    } else if (pinned_device_ >= 0 && r.device != pinned_device_) {
      bad = InvalidArgument("this manager is pinned to device " + std::to_string(pinned_device_) +
                            "; job asked for device " + std::to_string(r.device));
    } else {
      bad = scheduler_.check(r);
      if (bad.code() == ErrorCode::kNeverFits) ++stats_.jobs_rejected;
    }
    if (!bad.ok()) {
      calls.push_back([&done, bad] { done(bad); });
    } else if (deadline && to_ns(*deadline) <= now) {
      // No time to wait: take it now if the queue allows, else time out at once.
      auto grant = scheduler_.try_start(r, holder, now);
      if (grant.ok()) {
        const ActiveEntry& entry = *grant.value();
        record_grant_locked(entry.second);
        calls.push_back([&done, info = lease_info_locked(entry)] { done(info); });
      } else {
        ++stats_.jobs_timed_out;
        calls.push_back([&done, s = grant.status()] {
          done(Status(ErrorCode::kTimedOut, "no time to wait: " + s.message()));
        });
      }
    } else {
      pending_.emplace(r.job_id, std::move(done));
      std::optional<TimeNs> deadline_ns;
      if (deadline) deadline_ns = to_ns(*deadline);
      // enqueue() runs a scheduling pass: the request itself may start at once.
      handle_grants_locked(scheduler_.enqueue(r, holder, now, deadline_ns).value(), calls);
      // Wake the housekeeper only for a real waiter (its deadline and polling); waking it
      // for a lease granted at once only makes the two threads contend for the lock.
      if (scheduler_.is_waiting(r.job_id)) housekeeper_cv_.notify_all();
    }
  }
  run_all(calls);
}

StatusOr<LeaseInfo> LocalLedger::acquire(const LeaseRequest& request, const WaitOptions& wait) {
  if (wait.cancel && wait.cancel->cancelled()) {
    return Status(ErrorCode::kCancelled, "cancelled before it was queued");
  }
  struct Slot {
    std::mutex mutex;
    std::condition_variable cv;
    std::optional<StatusOr<LeaseInfo>> result;
  };
  auto slot = std::make_shared<Slot>();
  acquire_async(request, self_, wait.deadline, [slot](StatusOr<LeaseInfo> result) {
    std::lock_guard lock(slot->mutex);
    slot->result.emplace(std::move(result));
    slot->cv.notify_all();
  });
  std::optional<std::uint64_t> subscription;
  if (wait.cancel) {
    CancelToken token = *wait.cancel;
    subscription = token.subscribe([this, id = request.job_id] { (void)cancel(id); });
  }
  std::unique_lock lock(slot->mutex);
  slot->cv.wait(lock, [&] { return slot->result.has_value(); });
  StatusOr<LeaseInfo> result = std::move(*slot->result);
  lock.unlock();
  if (subscription) {
    CancelToken token = *wait.cancel;
    token.unsubscribe(*subscription);
  }
  return result;
}

Status LocalLedger::release_locked(std::string_view job_id, JobOutcome outcome,
                                   const std::optional<std::uint32_t>& requester_uid, Calls& calls,
                                   std::vector<int>* devices, std::uint64_t lease_id) {
  const TimeNs now = now_ns();
  auto released = scheduler_.release(job_id, now, requester_uid, lease_id);
  if (!released.ok()) return released.status();
  if (outcome == JobOutcome::kSucceeded) {
    ++stats_.jobs_succeeded;
  } else {
    ++stats_.jobs_failed;
  }
  hold_times_.observe(released->held_ns);
  stats_.active_jobs = scheduler_.active_count();
  // The holder's own usage no longer shields it from the foreign count. The device list
  // is copied out before the scheduling pass, which may reuse the entry that holds it.
  change_holder_locked(released->devices, released->holder.pid, -1);
  if (devices != nullptr) devices->assign(released->devices.begin(), released->devices.end());
  // The freed memory may let waiters start.
  schedule_locked(now, calls);
  return Status::Ok();
}

Status LocalLedger::release(std::string_view job_id, JobOutcome outcome) {
  return release_as(job_id, outcome, std::nullopt, nullptr);
}

Status LocalLedger::release_as(std::string_view job_id, JobOutcome outcome,
                               std::uint32_t requester_uid) {
  return release_as(job_id, outcome, std::optional<std::uint32_t>(requester_uid), nullptr);
}

Status LocalLedger::release_as(std::string_view job_id, JobOutcome outcome,
                               const std::optional<std::uint32_t>& requester_uid,
                               std::vector<int>* devices, std::uint64_t lease_id) {
  Calls calls;
  Status s;
  {
    MutexLock lock(mutex_);
    s = release_locked(job_id, outcome, requester_uid, calls, devices, lease_id);
  }
  run_all(calls);
  return s;
}

Status LocalLedger::cancel(std::string_view job_id) { return cancel_as(job_id, 0); }

Status LocalLedger::cancel_as(std::string_view job_id, std::uint32_t requester_uid) {
  Calls calls;
  {
    MutexLock lock(mutex_);
    if (!scheduler_.is_waiting(job_id)) {
      return NotFound("no waiting request for job '" + std::string(job_id) + "'");
    }
    for (const auto* w : scheduler_.waiters()) {
      if (w->request.job_id == job_id && requester_uid != 0 && w->holder.uid != requester_uid) {
        return Status(ErrorCode::kPermissionDenied,
                      "job '" + std::string(job_id) + "' was queued by uid " +
                          std::to_string(w->holder.uid) + "; uid " + std::to_string(requester_uid) +
                          " may not cancel it");
      }
    }
    Status s = scheduler_.cancel(job_id);
    if (!s.ok()) return s;
    finish_dropped_locked(
        {Dropped{std::string(job_id),
                 Status(ErrorCode::kCancelled, "job '" + std::string(job_id) + "' was cancelled")}},
        calls);
    schedule_locked(now_ns(), calls);  // the head may have changed
  }
  run_all(calls);
  return Status::Ok();
}

StatusOr<bool> LocalLedger::can_admit(std::uint64_t bytes, int gpus, int device) {
  refresh_if_stale();
  if (pinned_device_ >= 0 && device == -1) device = pinned_device_;
  MutexLock lock(mutex_);
  Status s = scheduler_.check_shape(bytes, gpus, device);
  if (s.code() == ErrorCode::kNeverFits) return false;
  if (!s.ok()) return s;
  if (scheduler_.active_count() >= config_.max_concurrent_jobs) return false;
  // Fits now on some healthy devices, ignoring the queue (a status question, not a grant).
  int fitting = 0;
  for (std::size_t i = 0; i < scheduler_.device_count(); ++i) {
    const auto& st = scheduler_.device(static_cast<int>(i));
    if (device >= 0 && device != static_cast<int>(i)) continue;
    if (st.healthy && st.admissible() >= bytes) ++fitting;
  }
  return fitting >= gpus;
}

StatusOr<Snapshot> LocalLedger::snapshot() {
  (void)refresh();
  MutexLock lock(mutex_);
  Snapshot snap;
  snap.backend = backend_info_;
  snap.config = config_;
  snap.taken_at = std::chrono::system_clock::now();
  snap.source = description();
  const TimeNs now = now_ns();
  const auto& reserved = scheduler_.reserved_devices();
  for (std::size_t i = 0; i < devices_.size(); ++i) {
    const auto& st = scheduler_.device(static_cast<int>(i));
    DeviceAccount acct;
    acct.info = devices_[i];
    acct.capacity_bytes = st.capacity;
    acct.leased_bytes = st.leased;
    acct.foreign_bytes = st.foreign;
    acct.admissible_bytes = st.admissible();
    acct.peak_leased_bytes = st.peak_leased;
    acct.active_leases = st.leases;
    acct.reserved_for_head =
        std::find(reserved.begin(), reserved.end(), static_cast<int>(i)) != reserved.end();
    snap.devices.push_back(std::move(acct));
  }
  for (const auto& entry : scheduler_.active()) snap.leases.push_back(lease_info_locked(entry));
  std::sort(snap.leases.begin(), snap.leases.end(),
            [](const LeaseInfo& a, const LeaseInfo& b) { return a.granted_at < b.granted_at; });
  int position = 0;
  for (const auto* w : scheduler_.waiters()) {
    WaiterInfo info;
    info.job_id = w->request.job_id;
    info.bytes = w->request.bytes;
    info.gpus = w->request.gpus;
    info.priority = w->request.priority;
    info.device = w->request.device;
    info.position = position++;
    info.pid = w->holder.pid;
    info.uid = w->holder.uid;
    info.command = w->request.command;
    info.waited_s = static_cast<double>(elapsed_ns(w->requested_at, now)) / 1e9;
    snap.queue.push_back(std::move(info));
  }
  snap.stats = stats_;
  snap.stats.hold_seconds = hold_times_.to_histogram();
  snap.stats.wait_seconds = wait_times_.to_histogram();
  snap.stats.active_jobs = scheduler_.active_count();
  return snap;
}

void LocalLedger::housekeeper_loop() NO_THREAD_SAFETY_ANALYSIS {
  const TimeNs poll_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(config_.poll_interval).count();
  MutexLock lock(mutex_);
  while (!stopping_) {
    std::optional<TimeNs> wake = scheduler_.next_deadline();
    if (scheduler_.waiting_count() > 0) {
      const TimeNs poll_at = last_refresh_ + poll_ns;
      wake = wake ? std::min(*wake, poll_at) : poll_at;
    }
    if (wake) {
      housekeeper_cv_.wait_until(lock.native(), SteadyTime(std::chrono::nanoseconds(*wake)));
    } else {
      housekeeper_cv_.wait(lock.native());
    }
    if (stopping_) break;
    Calls calls;
    TimeNs now = now_ns();
    finish_dropped_locked(scheduler_.expire(now), calls);
    // While anyone waits, outside processes may free memory: poll the backend.
    if (scheduler_.waiting_count() > 0 && now - last_refresh_ >= poll_ns) {
      lock.native().unlock();
      run_all(calls);
      (void)refresh();
      lock.native().lock();
      now = now_ns();
    }
    schedule_locked(now, calls);
    if (!calls.empty()) {
      lock.native().unlock();
      run_all(calls);
      lock.native().lock();
    }
  }
}

}  // namespace gpumgr::core
