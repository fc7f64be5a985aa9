#include "core/local_ledger.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "core/accounting.h"
#include "gpumgr/units.h"
#include "state/kind_history.h"
#include "util/fast_clock.h"

namespace gpumgr::core {
namespace {
using Calls = std::vector<std::function<void()>>;

void run_all(Calls& calls) {
  for (auto& call : calls) call();
  calls.clear();
}

TimeNs seconds_to_ns(double seconds) { return static_cast<TimeNs>(std::llround(seconds * 1e9)); }

SchedulerConfig scheduler_config(const LedgerConfig& config) {
  SchedulerConfig s{config.max_concurrent_jobs, config.placement, config.queue};
  s.fair_share = config.fair_share;
  s.fair_share_half_life = seconds_to_ns(config.fair_share_half_life_s);
  return s;
}

// The default Signaller: the holder and its descendants, never init or the ledger's own
// process (a holder's pid comes from the kernel, but a bug must not take the daemon down).
int signal_tree(std::uint32_t pid, int signal) {
  const auto self = static_cast<std::uint32_t>(::getpid());
  int signalled = 0;
  for (const std::uint32_t p : process_tree(pid)) {
    if (p <= 1 || p == self) continue;
    if (::kill(static_cast<pid_t>(p), signal) == 0) ++signalled;
  }
  return signalled;
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
  std::shared_ptr<state::KindHistory> history;
  std::string history_note;
  if (!config.history_path.empty()) {
    auto opened = state::KindHistory::open(config.history_path, &history_note);
    if (!opened.ok()) return opened.status();
    history = std::move(opened).value();
  }
  return std::shared_ptr<LocalLedger>(new LocalLedger(std::move(backend), config, pinned_device,
                                                      std::move(devices).value(),
                                                      std::move(history), std::move(history_note)));
}

LocalLedger::LocalLedger(std::shared_ptr<DeviceBackend> backend, const LedgerConfig& config,
                         int pinned_device, std::vector<DeviceInfo> devices,
                         std::shared_ptr<state::KindHistory> history, std::string history_note)
    : backend_(std::move(backend)),
      pinned_device_(pinned_device),
      backend_info_(backend_->info()),
      self_{static_cast<std::uint32_t>(::getpid()), static_cast<std::uint32_t>(::getuid())},
      config_(config),
      poll_ns_(std::chrono::duration_cast<std::chrono::nanoseconds>(config.poll_interval).count()),
      scheduler_(scheduler_config(config), devices.size()),
      history_(std::move(history)),
      history_note_(std::move(history_note)) {
  {
    MutexLock lock(mutex_);
    signaller_ = signal_tree;
    holders_.resize(devices.size());
    ancestors_ = read_ancestry(devices);
    apply_devices_locked(std::move(devices));
    // What the history knows of each kind's hold times, so that the scheduler's estimates
    // survive a restart. A history that cannot be read here only means no head start.
    if (history_) {
      if (auto kinds = history_->all(); kinds.ok()) {
        for (const KindEstimate& k : *kinds) {
          if (auto holds = history_->recent_hold_times(k.kind); holds.ok()) {
            scheduler_.learn_holds(k.kind, *holds);
          }
        }
      }
    }
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
  devices_ = std::move(devices);
  const std::size_t n = std::min(devices_.size(), scheduler_.device_count());
  for (std::size_t i = 0; i < n; ++i) {
    const int d = static_cast<int>(i);
    const auto& st = scheduler_.device(d);
    scheduler_.set_device(d, capacity_bytes(devices_[i].total_bytes, config_.memory_limit),
                          st.foreign, devices_[i].healthy);
    attribute_locked(d);
  }
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

void LocalLedger::attribute_locked(int d) {
  const auto i = static_cast<std::size_t>(d);
  if (i >= devices_.size()) return;
  const DeviceInfo& info = devices_[i];
  auto& holders = holders_[i];
  std::optional<std::uint64_t> own;
  if (!info.processes_known && own_usage_ &&
      std::any_of(holders.begin(), holders.end(),
                  [this](const HolderUse& h) { return h.pid == self_.pid; })) {
    own = own_usage_(d);
  }
  const DeviceAttribution split = attribute_device(info, holders, ancestors_, self_.pid, own);
  const auto& st = scheduler_.device(d);
  if (st.foreign != split.foreign) scheduler_.set_device(d, st.capacity, split.foreign, st.healthy);
  if (st.overuse != split.overuse) scheduler_.set_overuse(d, split.overuse);
}

void LocalLedger::change_holder_locked(std::span<const int> devices, std::uint32_t pid, int delta,
                                       std::uint64_t bytes) {
  for (const int d : devices) {
    auto& holders = holders_[static_cast<std::size_t>(d)];
    auto it = std::find_if(holders.begin(), holders.end(),
                           [pid](const HolderUse& h) { return h.pid == pid; });
    if (it == holders.end()) {
      if (delta > 0) {
        holders.push_back(HolderUse{pid, delta, bytes * static_cast<std::uint64_t>(delta), {}});
      }
    } else {
      it->leases += delta;
      if (delta > 0) {
        it->leased_bytes += bytes * static_cast<std::uint64_t>(delta);
      } else {
        it->leased_bytes -= std::min(it->leased_bytes, bytes * static_cast<std::uint64_t>(-delta));
      }
      if (it->leases <= 0) {
        // Order does not matter; keep the vector's capacity. (No self-copy when it is the
        // last: that load would wait for the store just made to it.)
        if (it + 1 != holders.end()) *it = holders.back();
        holders.pop_back();
      }
    }
    // The holder's own memory there is now covered by its lease, or no longer is. Nothing
    // a change of holders could move when the reading lists no processes and there is no
    // figure of our own to attribute.
    const DeviceInfo& info = devices_[static_cast<std::size_t>(d)];
    if (info.processes_known ? !info.processes.empty() : static_cast<bool>(own_usage_)) {
      attribute_locked(d);
    }
  }
}

std::optional<std::uint64_t> LocalLedger::lease_use_locked(std::uint32_t pid, std::uint64_t bytes,
                                                           int device) const {
  const auto& holders = holders_[static_cast<std::size_t>(device)];
  const auto it = std::find_if(holders.begin(), holders.end(),
                               [pid](const HolderUse& h) { return h.pid == pid; });
  if (it == holders.end() || !it->used_bytes) return std::nullopt;
  return lease_share(*it->used_bytes, bytes, it->leased_bytes);
}

void LocalLedger::record_run_locked(std::string_view job_id, const Released& released,
                                    JobOutcome outcome, Calls& calls) {
  const auto found = tracks_.find(job_id);
  const LeaseTrack* track = found != tracks_.end() && found->second.lease_id == released.lease_id
                                ? &found->second
                                : nullptr;
  if (!released.kind.empty() && history_) {
    state::KindRun run;
    run.kind.assign(released.kind);
    for (std::size_t k = 0; k < released.devices.size(); ++k) {
      // The last poll's figure, and the peak of the polls before it.
      std::optional<std::uint64_t> peak =
          lease_use_locked(released.holder.pid, released.bytes, released.devices[k]);
      if (track != nullptr && k < track->peaks.size() && track->peaks[k]) {
        peak = std::max(peak.value_or(0), *track->peaks[k]);
      }
      if (peak) run.peak_bytes = std::max(run.peak_bytes.value_or(0), *peak);
    }
    run.leased_bytes = released.bytes;
    run.hold_s = static_cast<double>(released.held_ns) / 1e9;
    run.overused = track != nullptr && track->overuse.ever;
    run.failed = outcome == JobOutcome::kFailed;
    run.ended_at = std::chrono::system_clock::now();
    // SQLite writes outside the ledger's lock, on the releasing thread.
    calls.push_back([history = history_, run = std::move(run)] { (void)history->record(run); });
  }
  if (found != tracks_.end()) tracks_.erase(found);
}

void LocalLedger::emit_locked(LeaseEvent event, Calls& calls) {
  if (!on_event_) return;
  calls.push_back([handler = on_event_, e = std::move(event)] { handler(e); });
}

void LocalLedger::track_usage_locked(TimeNs now, Calls& calls) {
  std::vector<std::pair<std::string, std::uint64_t>> to_release;  // job id, lease id
  for (const auto& entry : scheduler_.active()) {
    const auto& [job_id, lease] = entry;
    // The device where the holder is furthest over its lease, for the events.
    bool over = false;
    bool any_known = false;
    int worst_device = lease.devices.empty() ? -1 : lease.devices.front();
    std::uint64_t worst_used = 0;
    std::vector<std::optional<std::uint64_t>> use(lease.devices.size());
    for (std::size_t k = 0; k < lease.devices.size(); ++k) {
      use[k] = lease_use_locked(lease.holder.pid, lease.bytes, lease.devices[k]);
      if (!use[k]) continue;
      any_known = true;
      if (*use[k] > worst_used) {
        worst_used = *use[k];
        worst_device = lease.devices[k];
      }
      over = over || exceeds_lease(*use[k], lease.bytes, config_.overuse.tolerance_percent);
    }
    auto found = tracks_.find(job_id);
    if (found == tracks_.end()) {
      if (!any_known) continue;  // nothing measured: nothing to keep
      found = tracks_.emplace(job_id, LeaseTrack{}).first;
    }
    LeaseTrack& track = found->second;
    track.lease_id = lease.lease_id;
    track.peaks.resize(lease.devices.size());
    for (std::size_t k = 0; k < use.size(); ++k) {
      if (use[k]) track.peaks[k] = std::max(track.peaks[k].value_or(0), *use[k]);
    }
    const OveruseStep step = step_overuse(track.overuse, over, now, config_.overuse);
    if (!step.started && !step.ended && !step.terminate && !step.kill) continue;
    LeaseEvent event;
    event.job_id = job_id;
    event.pid = lease.holder.pid;
    event.uid = lease.holder.uid;
    event.device = worst_device;
    event.leased_bytes = lease.bytes;
    event.used_bytes = worst_used;
    const std::string used_of = "used " + format_bytes(worst_used) + " of " +
                                format_bytes(lease.bytes) + " on device " +
                                std::to_string(worst_device);
    if (step.started) {
      ++stats_.overuse_events;
      event.kind = LeaseEvent::Kind::kOveruseStarted;
      event.message = "exceeds its lease: " + used_of;
      emit_locked(event, calls);
    }
    if (step.ended) {
      event.kind = LeaseEvent::Kind::kOveruseEnded;
      event.message = "back within its lease: " + used_of;
      emit_locked(event, calls);
    }
    if (step.terminate) {
      ++stats_.overuse_terminations;
      track.overuse.enforcement = "terminating: exceeded its lease: " + used_of;
      const int signalled = signaller_(lease.holder.pid, SIGTERM);
      event.kind = LeaseEvent::Kind::kTerminating;
      event.message = "exceeded its lease for " + std::to_string(config_.overuse.grace_s) +
                      " s: " + used_of + "; sent SIGTERM to " + std::to_string(signalled) +
                      " process(es)";
      emit_locked(event, calls);
    }
    if (step.kill) {
      const int signalled = signaller_(lease.holder.pid, SIGKILL);
      event.kind = LeaseEvent::Kind::kKilled;
      event.message = "still there after SIGTERM: sent SIGKILL to " + std::to_string(signalled) +
                      " process(es); lease released as failed: exceeded its lease: " + used_of;
      emit_locked(event, calls);
      to_release.emplace_back(job_id, lease.lease_id);
    }
  }
  for (const auto& [job_id, lease_id] : to_release) {
    (void)release_locked(job_id, JobOutcome::kFailed, std::nullopt, calls, nullptr, lease_id);
  }
}

void LocalLedger::fill_usage_locked(const ActiveEntry& entry, LeaseInfo& info, TimeNs now) const {
  const auto& [job_id, lease] = entry;
  const auto found = tracks_.find(job_id);
  const LeaseTrack* track =
      found != tracks_.end() && found->second.lease_id == lease.lease_id ? &found->second : nullptr;
  info.usage.clear();
  for (std::size_t k = 0; k < lease.devices.size(); ++k) {
    DeviceUse u;
    u.device = lease.devices[k];
    u.used_bytes = lease_use_locked(lease.holder.pid, lease.bytes, u.device);
    u.peak_used_bytes = u.used_bytes;
    if (track != nullptr && k < track->peaks.size() && track->peaks[k]) {
      u.peak_used_bytes = std::max(u.peak_used_bytes.value_or(0), *track->peaks[k]);
    }
    info.usage.push_back(u);
  }
  if (track != nullptr) {
    info.estimate = track->estimate;
    info.overused = track->overuse.since.has_value();
    info.overused_s =
        info.overused ? static_cast<double>(elapsed_ns(*track->overuse.since, now)) / 1e9 : 0.0;
    info.enforcement = track->overuse.enforcement;
  }
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
    track_usage_locked(now_ns(), calls);
    last_refresh_ = now_ns();
    last_refresh_seen_.store(last_refresh_, std::memory_order_relaxed);
    wall_offset_.store(wall_offset_now(), std::memory_order_relaxed);
    schedule_locked(last_refresh_, calls);
  }
  run_all(calls);
  return reading.ok() ? Status::Ok() : reading.status();
}

TimeNs LocalLedger::refresh_if_stale() {
  const TimeNs poll_ns = poll_ns_.load(std::memory_order_relaxed);
  const TimeNs now = now_ns();
  if (now - last_refresh_seen_.load(std::memory_order_relaxed) < poll_ns) return now;
  (void)refresh();
  return now_ns();
}

void LocalLedger::set_event_handler(EventHandler handler) {
  MutexLock lock(mutex_);
  on_event_ = std::move(handler);
}

void LocalLedger::set_signaller(Signaller signaller) {
  MutexLock lock(mutex_);
  signaller_ = std::move(signaller);
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
  info.kind.assign(lease.kind);
  info.usage.clear();
  info.overused = false;
  info.overused_s = 0;
  info.enforcement.clear();
  info.estimate.clear();
  if (!tracks_.empty()) {
    const auto found = tracks_.find(job_id);
    if (found != tracks_.end()) info.estimate = found->second.estimate;
  }
  info.revocable.assign(revocable_name(lease.revocable));
  info.resident.assign(lease.resident);
  info.in_use_by = lease.users;
  info.beside_resident.assign(lease.beside);
  info.revoking = lease.revoking;
  info.revoked_for.assign(lease.revoked_for);
  info.revoke_in_s = 0;
  info.revoke_grace_s = lease.revocable == Revocable::kNo
                            ? 0.0
                            : lease.revoke_grace_s.value_or(config_.revoke_grace_s);
  if (lease.revoking) {
    if (const auto at = revocations_.deadline(job_id)) {
      info.revoke_in_s = static_cast<double>(elapsed_ns(now_ns(), *at)) / 1e9;
    }
  }
}

void LocalLedger::schedule_locked(TimeNs now, Calls& calls) {
  // Nobody waits (the common case on release): a pass would grant nothing.
  if (scheduler_.waiting_count() == 0) return;
  handle_grants_locked(scheduler_.schedule(now), calls);
}

void LocalLedger::start_revocations_locked(const std::vector<Revocation>& revocations, TimeNs now,
                                           Calls& calls) {
  for (const Revocation& r : revocations) {
    const ActiveEntry* entry = scheduler_.find_active(r.job_id);
    if (entry == nullptr) continue;
    const ActiveLease& lease = entry->second;
    const double grace_s = lease.revoke_grace_s.value_or(config_.revoke_grace_s);
    revocations_.add(r.job_id, r.lease_id, now + static_cast<TimeNs>(grace_s * 1e9));
    if (r.cause == RevokeCause::kResident) {
      ++stats_.revocations_resident;
    } else {
      ++stats_.revocations_preempted;
    }
    RevokeNotice notice;
    notice.job_id = r.job_id;
    notice.cause = std::string(revoke_cause_name(r.cause));
    notice.for_job = r.for_job;
    notice.grace_s = grace_s;
    const std::string what =
        lease.revocable == Revocable::kResident ? "resident '" + lease.resident + "'" : "lease";
    const std::string grace = std::to_string(static_cast<long long>(std::ceil(grace_s)));
    notice.message = (r.for_job.empty() ? what + " revoked on request"
                                        : what + " revoked for job '" + r.for_job + "'") +
                     ": release within " + grace + " s, or its processes are killed";
    LeaseEvent event;
    event.kind = LeaseEvent::Kind::kRevoked;
    event.job_id = r.job_id;
    event.pid = lease.holder.pid;
    event.uid = lease.holder.uid;
    event.device = lease.devices.empty() ? -1 : lease.devices.front();
    event.leased_bytes = lease.bytes;
    event.message = notice.message;
    emit_locked(std::move(event), calls);
    if (on_revoke_) calls.push_back([handler = on_revoke_, notice] { handler(notice); });
  }
  // The housekeeper must wake at the first grace's end.
  if (!revocations.empty()) housekeeper_cv_.notify_all();
}

void LocalLedger::end_revocations_locked(TimeNs now, Calls& calls) {
  if (revocations_.empty()) return;
  for (const auto& [job_id, lease_id] : revocations_.take_due(now)) {
    const ActiveEntry* entry = scheduler_.find_active(job_id);
    if (entry == nullptr || entry->second.lease_id != lease_id) continue;
    const Holder holder = entry->second.holder;
    // An in-process holder is this process: its lease is released, never its threads killed.
    const int signalled = holder.pid == self_.pid ? 0 : signaller_(holder.pid, SIGKILL);
    ++stats_.revocation_kills;
    LeaseEvent event;
    event.kind = LeaseEvent::Kind::kRevokeKilled;
    event.job_id = job_id;
    event.pid = holder.pid;
    event.uid = holder.uid;
    event.leased_bytes = entry->second.bytes;
    event.message = "had not released its revoked lease at the grace's end: sent SIGKILL to " +
                    std::to_string(signalled) + " process(es); lease released as preempted";
    if (on_revoke_) {
      RevokeNotice notice;
      notice.job_id = job_id;
      notice.cause = std::string(revoke_cause_name(entry->second.revocable == Revocable::kResident
                                                       ? RevokeCause::kResident
                                                       : RevokeCause::kPreempted));
      notice.for_job = entry->second.revoked_for;
      notice.message = event.message;
      notice.ended = true;
      calls.push_back([handler = on_revoke_, notice] { handler(notice); });
    }
    emit_locked(std::move(event), calls);
    (void)release_locked(job_id, JobOutcome::kFailed, std::nullopt, calls, nullptr, lease_id);
  }
}

void LocalLedger::set_revoke_handler(std::function<void(const RevokeNotice&)> handler) {
  MutexLock lock(mutex_);
  on_revoke_ = std::move(handler);
}

Status LocalLedger::revoke_as(std::string_view job_id,
                              const std::optional<std::uint32_t>& requester_uid) {
  Calls calls;
  {
    MutexLock lock(mutex_);
    auto r = scheduler_.revoke(job_id, requester_uid);
    if (!r.ok()) return r.status();
    start_revocations_locked({r.value()}, now_ns(), calls);
  }
  run_all(calls);
  return Status::Ok();
}

Status LocalLedger::touch_as(std::string_view job_id,
                             const std::optional<std::uint32_t>& requester_uid) {
  MutexLock lock(mutex_);
  const ActiveEntry* entry = scheduler_.find_active(job_id);
  if (entry != nullptr && requester_uid && *requester_uid != 0 &&
      *requester_uid != entry->second.holder.uid) {
    return Status(ErrorCode::kPermissionDenied,
                  "job '" + std::string(job_id) + "' is held by uid " +
                      std::to_string(entry->second.holder.uid) + "; uid " +
                      std::to_string(*requester_uid) + " may not use it");
  }
  return scheduler_.touch(job_id, now_ns());
}

void LocalLedger::record_grant_locked(const ActiveLease& lease) {
  change_holder_locked(lease.devices, lease.holder.pid, +1, lease.bytes);
  // A sleeping housekeeper must start polling: held leases are measured every interval.
  if (housekeeper_idle_) {
    housekeeper_idle_ = false;
    housekeeper_cv_.notify_all();
  }
  stats_.active_jobs = scheduler_.active_count();
  stats_.peak_active_jobs = std::max(stats_.peak_active_jobs, stats_.active_jobs);
  wait_times_.observe(elapsed_ns(lease.requested_at, lease.granted_at));
}

void LocalLedger::handle_grants_locked(const std::vector<Grant>& grants, Calls& calls) {
  for (const Grant& g : grants) {
    const ActiveEntry* entry = scheduler_.find_active(g.job_id);
    if (!tracks_.empty()) {
      if (auto t = tracks_.find(g.job_id); t != tracks_.end()) {
        t->second.lease_id = entry->second.lease_id;
      }
    }
    record_grant_locked(entry->second);
    auto it = pending_.find(g.job_id);
    if (it == pending_.end()) continue;
    calls.push_back(
        [done = std::move(it->second), info = lease_info_locked(*entry)] { done(info); });
    pending_.erase(it);
  }
  // Every pass (enqueue's and schedule's) ends here: what it decided to revoke starts now.
  if (scheduler_.revocable_count() > 0) {
    start_revocations_locked(scheduler_.take_revocations(), now_ns(), calls);
  }
}

void LocalLedger::finish_dropped_locked(const std::vector<Dropped>& dropped, Calls& calls) {
  for (const Dropped& d : dropped) {
    if (d.reason.code() == ErrorCode::kTimedOut) ++stats_.jobs_timed_out;
    if (d.reason.code() == ErrorCode::kCancelled) ++stats_.jobs_cancelled;
    if (!tracks_.empty()) tracks_.erase(d.job_id);
    auto it = pending_.find(d.job_id);
    if (it == pending_.end()) continue;
    calls.push_back([done = std::move(it->second), reason = d.reason] { done(reason); });
    pending_.erase(it);
  }
}

StatusOr<LeaseInfo> LocalLedger::try_acquire(const LeaseRequest& request) {
  if (Status s = check_own_holder(request); !s.ok()) return s;
  return try_acquire_as(request, self_);
}

Status LocalLedger::check_own_holder(const LeaseRequest& request) const {
  // In process, the holder is this process: a descendant's memory is attributed to it anyway.
  if (request.holder_pid == 0 || request.holder_pid == self_.pid) return Status::Ok();
  return InvalidArgument("holder_pid " + std::to_string(request.holder_pid) +
                         " names another process; an in-process ledger holds its leases for "
                         "this process (pid " +
                         std::to_string(self_.pid) + ")");
}

void LocalLedger::pin_request(LeaseRequest& request) const {
  if (pinned_device_ < 0 || request.device != -1) return;
  const auto& only = request.allowed_devices;
  // A pinned manager may still serve a job confined to devices that include its own.
  if (!only.empty() && std::find(only.begin(), only.end(), pinned_device_) == only.end()) return;
  request.allowed_devices.clear();
  request.device = pinned_device_;
}

Status LocalLedger::check_pin(const LeaseRequest& request) const {
  if (pinned_device_ < 0 || request.device == pinned_device_) return Status::Ok();
  if (request.device == -1 && !request.allowed_devices.empty()) {
    return InvalidArgument("this manager is pinned to device " + std::to_string(pinned_device_) +
                           "; job may use only other devices");
  }
  return InvalidArgument("this manager is pinned to device " + std::to_string(pinned_device_) +
                         "; job asked for device " + std::to_string(request.device));
}

Status LocalLedger::try_acquire_into(const LeaseRequest& request, LeaseInfo& lease) {
  if (Status s = check_own_holder(request); !s.ok()) return s;
  return try_acquire_into(request, self_, lease);
}

StatusOr<LeaseInfo> LocalLedger::try_acquire_as(const LeaseRequest& request, Holder holder) {
  LeaseInfo lease;
  if (Status s = try_acquire_into(request, holder, lease); !s.ok()) return s;
  return lease;
}

Status LocalLedger::resolve_estimate(const LeaseRequest& request,
                                     std::optional<LeaseRequest>& resolved, std::string& note) {
  if (request.bytes != 0 || request.kind.empty()) return Status::Ok();
  // A kind with control characters is never looked up.
  if (Status s = check_kind(request.kind); !s.ok()) return s;
  std::string why;
  if (history_) {
    auto known = history_->estimate(request.kind);
    if (known.ok() && known->estimate_bytes) {
      resolved = request;
      resolved->bytes = *known->estimate_bytes;
      note = known->estimate_note;
      return Status::Ok();
    }
    if (known.ok()) {
      why = known->estimate_note;
    } else if (known.status().code() == ErrorCode::kNotFound) {
      why = "job kind '" + request.kind + "' has no recorded runs; " +
            std::to_string(state::kEstimateMinRuns) + " measured runs are needed";
    } else {
      return known.status();
    }
  } else {
    why =
        "no history of job kinds is kept here (the daemon keeps one in its state directory; "
        "in-process, give a history path)";
  }
  if (request.default_bytes == 0) {
    return Status(ErrorCode::kFailedPrecondition,
                  "no learned estimate for job kind '" + request.kind + "': " + why +
                      "; give a size, or a default for when there is no estimate");
  }
  resolved = request;
  resolved->bytes = request.default_bytes;
  note = "default " + format_bytes(request.default_bytes) + ": " + why;
  return Status::Ok();
}

Status LocalLedger::try_acquire_into(const LeaseRequest& request, Holder holder, LeaseInfo& lease) {
  // The time read for the staleness check stamps the grant too: one clock read, not two.
  // It may be a lock wait older than the grant, which only makes the hold look longer.
  const TimeNs now = refresh_if_stale();
  // Copy the request only when pinning or an estimate changes it: this is the hot path.
  std::optional<LeaseRequest> changed;
  std::string note;
  if (request.bytes == 0 && !request.kind.empty()) {
    if (Status s = resolve_estimate(request, changed, note); !s.ok()) {
      // No estimate to ask for: a refusal, counted as the blocking path counts it.
      if (s.code() == ErrorCode::kFailedPrecondition) {
        MutexLock lock(mutex_);
        ++stats_.jobs_rejected;
      }
      return s;
    }
  }
  if (pinned_device_ >= 0 && request.device == -1) {
    if (!changed) changed = request;
    pin_request(*changed);
  }
  const LeaseRequest& r = changed ? *changed : request;
  if (Status s = check_pin(r); !s.ok()) return s;
  MutexLock lock(mutex_);
  auto grant = scheduler_.try_start(r, holder, now);
  if (!grant.ok()) {
    const ErrorCode code = grant.status().code();
    if (code == ErrorCode::kResourceExhausted || code == ErrorCode::kNeverFits) {
      ++stats_.jobs_rejected;
    }
    return grant.status();
  }
  const ActiveEntry& entry = *grant.value();
  if (!note.empty()) {
    LeaseTrack& track = tracks_[entry.first];
    track.lease_id = entry.second.lease_id;
    track.estimate = std::move(note);
  }
  record_grant_locked(entry.second);
  fill_lease_info_locked(entry, lease);
  return Status::Ok();
}

void LocalLedger::acquire_async(const LeaseRequest& request, Holder holder,
                                std::optional<SteadyTime> deadline, Done done,
                                std::optional<std::chrono::system_clock::time_point> requested_at) {
  refresh_if_stale();
  std::optional<LeaseRequest> resolved;
  std::string note;
  if (Status s = resolve_estimate(request, resolved, note); !s.ok()) {
    if (s.code() == ErrorCode::kFailedPrecondition) {
      MutexLock lock(mutex_);
      ++stats_.jobs_rejected;
    }
    done(s);
    return;
  }
  LeaseRequest r = resolved ? std::move(*resolved) : request;
  pin_request(r);
  Calls calls;
  {
    MutexLock lock(mutex_);
    const TimeNs now = now_ns();
    Status bad;
    if (stopping_) {
      bad = Status(ErrorCode::kUnavailable, "the ledger is shutting down");
    } else if (Status pin = check_pin(r); !pin.ok()) {
      bad = pin;
    } else {
      bad = scheduler_.check(r);
      if (bad.code() == ErrorCode::kNeverFits) ++stats_.jobs_rejected;
    }
    if (bad.ok() && !note.empty()) {
      // The job id is neither active nor waiting (check() said so): no track of its own.
      tracks_[r.job_id] = LeaseTrack{0, std::move(note), {}, {}};
    }
    if (!bad.ok()) {
      calls.push_back([&done, bad] { done(bad); });
    } else if (deadline && to_ns(*deadline) <= now) {
      // No time to wait: take it now if the queue allows, else time out at once.
      auto grant = scheduler_.try_start(r, holder, now);
      if (grant.ok()) {
        const ActiveEntry& entry = *grant.value();
        if (auto t = tracks_.find(entry.first); t != tracks_.end()) {
          t->second.lease_id = entry.second.lease_id;
        }
        record_grant_locked(entry.second);
        calls.push_back([&done, info = lease_info_locked(entry)] { done(info); });
      } else {
        ++stats_.jobs_timed_out;
        if (!tracks_.empty()) tracks_.erase(r.job_id);
        calls.push_back([&done, s = grant.status()] {
          done(Status(ErrorCode::kTimedOut, "no time to wait: " + s.message()));
        });
      }
    } else {
      pending_.emplace(r.job_id, std::move(done));
      std::optional<TimeNs> deadline_ns;
      if (deadline) deadline_ns = to_ns(*deadline);
      // enqueue() runs a scheduling pass: the request itself may start at once.
      std::optional<TimeNs> asked_at;
      if (requested_at) {
        asked_at =
            std::chrono::duration_cast<std::chrono::nanoseconds>(requested_at->time_since_epoch())
                .count() -
            wall_offset_now();
      }
      handle_grants_locked(scheduler_.enqueue(r, holder, now, deadline_ns, asked_at).value(),
                           calls);
      // Wake the housekeeper only for a real waiter (its deadline and polling); waking it
      // for a lease granted at once only makes the two threads contend for the lock.
      if (scheduler_.is_waiting(r.job_id)) housekeeper_cv_.notify_all();
    }
  }
  run_all(calls);
}

StatusOr<LeaseInfo> LocalLedger::acquire(const LeaseRequest& request, const WaitOptions& wait) {
  if (Status s = check_own_holder(request); !s.ok()) return s;
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
  if (!revocations_.empty()) revocations_.forget(job_id);
  if (outcome == JobOutcome::kSucceeded) {
    ++stats_.jobs_succeeded;
  } else {
    ++stats_.jobs_failed;
  }
  hold_times_.observe(released->held_ns);
  stats_.active_jobs = scheduler_.active_count();
  if (!tracks_.empty() || !released->kind.empty()) {
    record_run_locked(job_id, *released, outcome, calls);
  }
  // The holder's own usage no longer shields it from the foreign count. The device list
  // is copied out before the scheduling pass, which may reuse the entry that holds it.
  change_holder_locked(released->devices, released->holder.pid, -1, released->bytes);
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

StatusOr<LeaseInfo> LocalLedger::adopt_as(const AdoptedLease& lease, Holder holder) {
  MutexLock lock(mutex_);
  const TimeNs now = now_ns();
  // Wall-clock times back to this process's steady clock; never in the future.
  const TimeNs offset = wall_offset_now();
  const auto steady = [&](std::chrono::system_clock::time_point t) {
    const TimeNs wall =
        std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
    return std::min(now, wall - offset);
  };
  const TimeNs granted_at = steady(lease.granted_at);
  const TimeNs requested_at = std::min(granted_at, steady(lease.requested_at));
  auto adopted = scheduler_.adopt(lease.request, lease.devices, holder, requested_at, granted_at);
  if (!adopted.ok()) return adopted.status();
  const ActiveEntry& entry = *adopted.value();
  if (!lease.estimate.empty()) {
    tracks_[entry.first] = LeaseTrack{entry.second.lease_id, lease.estimate, {}, {}};
  }
  // As a grant, but its wait was counted by the daemon that granted it.
  change_holder_locked(entry.second.devices, holder.pid, +1, entry.second.bytes);
  if (housekeeper_idle_) {
    housekeeper_idle_ = false;
    housekeeper_cv_.notify_all();
  }
  stats_.active_jobs = scheduler_.active_count();
  stats_.peak_active_jobs = std::max(stats_.peak_active_jobs, stats_.active_jobs);
  return lease_info_locked(entry);
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
    acct.overuse_bytes = st.overuse;
    acct.admissible_bytes = st.admissible();
    acct.peak_leased_bytes = st.peak_leased;
    acct.active_leases = st.leases;
    acct.reserved_for_head =
        std::find(reserved.begin(), reserved.end(), static_cast<int>(i)) != reserved.end();
    snap.devices.push_back(std::move(acct));
  }
  for (const auto& entry : scheduler_.active()) {
    LeaseInfo info = lease_info_locked(entry);
    fill_usage_locked(entry, info, now);
    snap.leases.push_back(std::move(info));
  }
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
    info.allowed_devices = w->request.allowed_devices;
    info.beside_resident = w->request.beside_resident;
    info.position = position++;
    info.pid = w->holder.pid;
    info.uid = w->holder.uid;
    info.command = w->request.command;
    info.waited_s = static_cast<double>(elapsed_ns(w->requested_at, now)) / 1e9;
    info.quota_wait = scheduler_.quota_wait(*w);
    snap.queue.push_back(std::move(info));
  }
  for (const UserAccount& a : scheduler_.user_accounts(now)) {
    snap.users.push_back(UserUsage{a.uid, a.leased_bytes, a.jobs, a.waiting, a.max_vram_bytes,
                                   a.max_jobs, a.usage_gib_s});
  }
  snap.stats = stats_;
  snap.stats.hold_seconds = hold_times_.to_histogram();
  snap.stats.wait_seconds = wait_times_.to_histogram();
  snap.stats.active_jobs = scheduler_.active_count();
  return snap;
}

void LocalLedger::housekeeper_loop() NO_THREAD_SAFETY_ANALYSIS {
  MutexLock lock(mutex_);
  while (!stopping_) {
    // Read each round: reconfigure() may change it (and wakes this thread).
    const TimeNs poll_ns = poll_ns_.load(std::memory_order_relaxed);
    std::optional<TimeNs> wake = scheduler_.next_deadline();
    if (const auto grace_end = revocations_.next()) {
      wake = wake ? std::min(*wake, *grace_end) : *grace_end;
    }
    // While anyone waits, outside processes may free memory; while a lease is held, its
    // holder's use is measured (overuse, peaks): poll the backend every interval.
    const bool polling = scheduler_.waiting_count() > 0 || scheduler_.active_count() > 0;
    if (polling) {
      const TimeNs poll_at = last_refresh_ + poll_ns;
      wake = wake ? std::min(*wake, poll_at) : poll_at;
    }
    if (wake) {
      housekeeper_cv_.wait_until(lock.native(), SteadyTime(std::chrono::nanoseconds(*wake)));
    } else {
      housekeeper_idle_ = true;
      housekeeper_cv_.wait(lock.native());
      housekeeper_idle_ = false;
    }
    if (stopping_) break;
    Calls calls;
    TimeNs now = now_ns();
    finish_dropped_locked(scheduler_.expire(now), calls);
    end_revocations_locked(now, calls);
    if ((scheduler_.waiting_count() > 0 || scheduler_.active_count() > 0) &&
        now - last_refresh_ >= poll_ns) {
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

StatusOr<std::vector<KindEstimate>> LocalLedger::estimates() {
  if (!history_) return std::vector<KindEstimate>{};
  return history_->all();
}

Status LocalLedger::forget_kind(std::string_view kind) {
  if (Status s = check_kind(kind); !s.ok()) return s;
  if (!history_) {
    return NotFound("no history of job kinds is kept here, so none of kind '" + std::string(kind) +
                    "'");
  }
  return history_->forget(kind);
}

Status LocalLedger::reconfigure(const LedgerConfig& config) {
  if (Status s = validate_config(config); !s.ok()) return s;
  Calls calls;
  {
    MutexLock lock(mutex_);
    if (config.placement != config_.placement || config.queue != config_.queue ||
        config.history_path != config_.history_path) {
      return InvalidArgument(
          "the placement, the queue policy and the history path cannot change while the "
          "ledger runs");
    }
    config_.max_concurrent_jobs = config.max_concurrent_jobs;
    config_.memory_limit = config.memory_limit;
    config_.poll_interval = config.poll_interval;
    config_.overuse = config.overuse;
    config_.revoke_grace_s = config.revoke_grace_s;  // for revocations from now on
    poll_ns_.store(
        std::chrono::duration_cast<std::chrono::nanoseconds>(config.poll_interval).count(),
        std::memory_order_relaxed);
    scheduler_.set_max_concurrent_jobs(config.max_concurrent_jobs);
    config_.fair_share = config.fair_share;
    config_.fair_share_half_life_s = config.fair_share_half_life_s;
    const TimeNs now = now_ns();
    scheduler_.set_fair_share(config.fair_share, seconds_to_ns(config.fair_share_half_life_s), now);
    // The capacities follow the memory limit: apply the last reading again under it.
    std::vector<DeviceInfo> reading = devices_;
    apply_devices_locked(std::move(reading));
    schedule_locked(now, calls);
  }
  // A new poll interval or new room: the housekeeper recomputes when it wakes.
  housekeeper_cv_.notify_all();
  run_all(calls);
  return Status::Ok();
}

Status LocalLedger::set_quotas(const QuotaConfig& quotas, QuotaBook::GroupResolver groups) {
  Calls calls;
  {
    MutexLock lock(mutex_);
    std::vector<Dropped> dropped = scheduler_.set_quotas(quotas, std::move(groups));
    finish_dropped_locked(dropped, calls);
    schedule_locked(now_ns(), calls);  // raised limits let waiters start
  }
  run_all(calls);
  return Status::Ok();
}

}  // namespace gpumgr::core
