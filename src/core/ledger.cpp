// The small shared pieces of the ledger interface: policy names, config validation,
// CancelToken and WaitOptions.
#include "gpumgr/ledger.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <map>

#include "core/local_ledger.h"
#include "core/overuse.h"

namespace gpumgr {

std::string_view placement_policy_name(PlacementPolicy policy) {
  switch (policy) {
    case PlacementPolicy::kBestFit:
      return "best-fit";
    case PlacementPolicy::kSpread:
      return "spread";
    case PlacementPolicy::kFirstFit:
      return "first-fit";
  }
  return "best-fit";
}

StatusOr<PlacementPolicy> parse_placement_policy(std::string_view name) {
  if (name == "best-fit") return PlacementPolicy::kBestFit;
  if (name == "spread") return PlacementPolicy::kSpread;
  if (name == "first-fit") return PlacementPolicy::kFirstFit;
  return InvalidArgument("unknown placement policy '" + std::string(name) +
                         "': use best-fit, spread or first-fit");
}

std::string_view queue_policy_name(QueuePolicy policy) {
  switch (policy) {
    case QueuePolicy::kFifo:
      return "fifo";
    case QueuePolicy::kGreedy:
      return "greedy";
    case QueuePolicy::kBackfill:
      break;
  }
  return "backfill";
}

StatusOr<QueuePolicy> parse_queue_policy(std::string_view name) {
  if (name == "backfill") return QueuePolicy::kBackfill;
  if (name == "fifo") return QueuePolicy::kFifo;
  if (name == "greedy") return QueuePolicy::kGreedy;
  return InvalidArgument("unknown queue policy '" + std::string(name) +
                         "': use backfill, fifo or greedy");
}

Status check_job_kind(std::string_view kind) { return core::check_kind(kind); }

std::string_view overuse_policy_name(OverusePolicy policy) {
  return policy == OverusePolicy::kTerminate ? "terminate" : "report";
}

StatusOr<OverusePolicy> parse_overuse_policy(std::string_view name) {
  if (name == "report") return OverusePolicy::kReport;
  if (name == "terminate") return OverusePolicy::kTerminate;
  return InvalidArgument("unknown overuse policy '" + std::string(name) +
                         "': use report or terminate");
}

Status validate_config(const LedgerConfig& config) {
  if (config.max_concurrent_jobs < 1) {
    return InvalidArgument("max_concurrent_jobs must be at least 1, got " +
                           std::to_string(config.max_concurrent_jobs));
  }
  if (!(config.memory_limit > 0.0 && config.memory_limit <= 1.0)) {
    char value[32];
    std::snprintf(value, sizeof value, "%g", config.memory_limit);
    return InvalidArgument(std::string("memory_limit must be in (0, 1], got ") + value);
  }
  if (config.poll_interval.count() <= 0) {
    return InvalidArgument("poll_interval must be positive, got " +
                           std::to_string(config.poll_interval.count()) + " ms");
  }
  if (!(config.revoke_grace_s >= 0 && config.revoke_grace_s <= 86400)) {  // NaN fails both
    char value[32];
    std::snprintf(value, sizeof value, "%g", config.revoke_grace_s);
    return InvalidArgument(
        std::string("revoke grace must be a finite number of seconds in [0, 86400], got ") + value);
  }
  if (!(config.fair_share_half_life_s >= 1 && config.fair_share_half_life_s <= 365 * 86400.0)) {
    char value[32];
    std::snprintf(value, sizeof value, "%g", config.fair_share_half_life_s);
    return InvalidArgument(
        std::string("fair_share_half_life must be between 1 second and 365 days, got ") + value +
        " s");
  }
  return core::validate_overuse_config(config.overuse);
}

struct CancelToken::State {
  std::mutex mutex;
  std::condition_variable idle;
  bool cancelled = false;
  std::uint64_t next_id = 1;
  std::uint64_t running = 0;  // the callback cancel() runs now, 0 for none
  std::map<std::uint64_t, std::function<void()>> callbacks;
};

CancelToken::CancelToken() : state_(std::make_shared<State>()) {}

void CancelToken::cancel() {
  std::unique_lock lock(state_->mutex);
  if (state_->cancelled) return;
  state_->cancelled = true;
  // Run each callback without the lock (it may take other locks), marking it running so
  // that unsubscribe() waits for it: after unsubscribe returns, the callback never runs.
  while (!state_->callbacks.empty()) {
    auto it = state_->callbacks.begin();
    state_->running = it->first;
    std::function<void()> fn = std::move(it->second);
    state_->callbacks.erase(it);
    lock.unlock();
    fn();
    lock.lock();
    state_->running = 0;
    state_->idle.notify_all();
  }
}

bool CancelToken::cancelled() const {
  std::lock_guard lock(state_->mutex);
  return state_->cancelled;
}

std::uint64_t CancelToken::subscribe(std::function<void()> fn) {
  std::unique_lock lock(state_->mutex);
  const std::uint64_t id = state_->next_id++;
  if (state_->cancelled) {
    lock.unlock();
    fn();
    return id;
  }
  state_->callbacks.emplace(id, std::move(fn));
  return id;
}

void CancelToken::unsubscribe(std::uint64_t id) {
  std::unique_lock lock(state_->mutex);
  state_->callbacks.erase(id);
  state_->idle.wait(lock, [&] { return state_->running != id; });
}

WaitOptions WaitOptions::for_seconds(double seconds) {
  WaitOptions wait;
  if (std::isfinite(seconds)) {
    // A larger duration would overflow the clock's nanoseconds (undefined behaviour).
    const double clamped = seconds < 0 ? 0 : std::min(seconds, 1e9);
    wait.deadline = std::chrono::steady_clock::now() +
                    std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                        std::chrono::duration<double>(clamped));
  }
  return wait;
}

StatusOr<std::shared_ptr<Ledger>> make_local_ledger(std::shared_ptr<DeviceBackend> backend,
                                                    const LedgerConfig& config, int pinned_device) {
  auto ledger = core::LocalLedger::create(std::move(backend), config, pinned_device);
  if (!ledger.ok()) return ledger.status();
  return std::shared_ptr<Ledger>(std::move(ledger).value());
}

}  // namespace gpumgr
