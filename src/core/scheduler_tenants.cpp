// The scheduler's tenancy rules: fair-share order of users within a priority, and waiting
// for quota (scheduler.h, "Order" and "Quotas"). Members of Scheduler, kept apart from the
// placement and backfill rules of scheduler.cpp.
#include <algorithm>
#include <tuple>

#include "core/scheduler.h"
#include "gpumgr/units.h"

namespace gpumgr::core {

void Scheduler::charge(const ActiveLease& lease, TimeNs now) {
  const std::uint64_t total = lease_total(lease.bytes, lease.devices.size());
  quotas_.charge(lease.holder.uid, total);
  usage_.start(lease.holder.uid, static_cast<double>(total) / static_cast<double>(kGiB), now);
}

void Scheduler::discharge(const ActiveLease& lease, TimeNs now) {
  const std::uint64_t total = lease_total(lease.bytes, lease.devices.size());
  quotas_.discharge(lease.holder.uid, total);
  usage_.stop(lease.holder.uid, static_cast<double>(total) / static_cast<double>(kGiB), now);
}

void Scheduler::find_held() const {
  held_.clear();
  if (!quotas_.limited()) return;
  // A user's earliest waiter is at the highest priority where it waits: walk the priorities
  // from the top and judge each user where it first appears.
  std::set<std::uint32_t> seen;
  for (const auto& [neg_priority, level] : fit_) {
    for (const auto& [uid, bucket] : level) {
      if (!seen.insert(uid).second) continue;
      const Waiter& first = queue_.at(Key{neg_priority, *bucket.seqs.begin()});
      const std::uint64_t total =
          lease_total(first.request.bytes, static_cast<std::size_t>(first.request.gpus));
      if (!quotas_.allows(uid, total)) held_.insert(uid);
    }
  }
}

std::map<Scheduler::Key, Scheduler::Waiter>::const_iterator Scheduler::head() const {
  if (queue_.empty()) return queue_.end();
  // Without quotas, and where the top priority's users are not ranked, the queue's first
  // waiter is the head (the hot path: one look).
  if (!quotas_.limited() && (!ranked_ || fit_.begin()->second.size() == 1)) {
    return queue_.begin();
  }
  find_held();
  for (const auto& [neg_priority, level] : fit_) {
    std::optional<std::pair<int, std::uint64_t>> best;  // (user rank, seq)
    for (const auto& [uid, bucket] : level) {
      if (held(uid)) continue;
      const std::pair<int, std::uint64_t> candidate{bucket.rank, *bucket.seqs.begin()};
      if (!best || candidate < *best) best = candidate;
    }
    if (best) return queue_.find(Key{neg_priority, best->second});
  }
  return queue_.end();
}

void Scheduler::rank_users(TimeNs now) {
  if (!config_.fair_share) {
    if (ranked_) {
      for (auto& [neg_priority, level] : fit_) {
        for (auto& [uid, bucket] : level) bucket.rank = 0;
      }
      ranked_ = false;
    }
    return;
  }
  ranked_ = false;
  const auto aged_after = static_cast<double>(config_.fair_share_half_life) * kAgedHalfLives;
  // (aged first, then least use; aged users and ties by their earliest arrival here).
  std::vector<std::tuple<int, double, std::uint64_t, UserBucket*>> order;
  for (auto& [neg_priority, level] : fit_) {
    if (level.size() < 2) {
      for (auto& [uid, bucket] : level) bucket.rank = 0;
      continue;
    }
    order.clear();
    for (auto& [uid, bucket] : level) {
      const std::uint64_t first = *bucket.seqs.begin();
      const Waiter& w = queue_.at(Key{neg_priority, first});
      const bool aged = static_cast<double>(elapsed_ns(w.requested_at, now)) >= aged_after;
      order.emplace_back(aged ? 0 : 1, aged ? 0.0 : usage_.usage(uid, now), first, &bucket);
    }
    std::sort(order.begin(), order.end());
    for (std::size_t i = 0; i < order.size(); ++i) {
      std::get<3>(order[i])->rank = static_cast<int>(i);
    }
    ranked_ = true;
  }
}

Scheduler::Rank Scheduler::rank_of(const Key& key) const {
  const Waiter& w = queue_.at(key);
  return Rank{key.neg_priority, fit_.at(key.neg_priority).at(w.holder.uid).rank, key.seq};
}

std::vector<Dropped> Scheduler::set_quotas(QuotaConfig config, QuotaBook::GroupResolver groups) {
  quotas_.configure(std::move(config), std::move(groups));
  std::vector<Dropped> dropped;
  for (auto it = queue_.begin(); it != queue_.end();) {
    const auto next = std::next(it);
    Status s = quotas_.check_admission(it->second.request, it->second.holder.uid);
    if (!s.ok()) {
      dropped.push_back({it->second.request.job_id, std::move(s)});
      remove_waiter(it);
    }
    it = next;
  }
  // The head may now be another waiter: choose its reservation again at the next pass.
  reserved_for_.clear();
  return dropped;
}

std::string Scheduler::quota_wait(const Waiter& waiter) const {
  if (!quotas_.limited()) return {};
  const std::uint32_t uid = waiter.holder.uid;
  std::string why = quotas_.why_waiting(
      uid, lease_total(waiter.request.bytes, static_cast<std::size_t>(waiter.request.gpus)));
  if (!why.empty()) return why;
  find_held();
  if (held(uid)) return "an earlier request of uid " + std::to_string(uid) + " waits for its quota";
  return {};
}

void Scheduler::set_fair_share(bool on, TimeNs half_life, TimeNs now) {
  config_.fair_share = on;
  config_.fair_share_half_life = std::max<TimeNs>(half_life, 1);
  usage_.set_half_life(config_.fair_share_half_life, now);
  rank_users(now);
}

std::vector<UserAccount> Scheduler::user_accounts(TimeNs now) const {
  std::map<std::uint32_t, UserAccount> users;
  for (const std::uint32_t uid : quotas_.known_users()) {
    const QuotaBook::Usage u = quotas_.usage(uid);
    const double use = usage_.usage(uid, now);
    // A user seen long ago, with nothing held and its use decayed away, is not listed.
    if (u.jobs == 0 && use < 1e-3 && quotas_.config().users.count(uid) == 0) continue;
    users[uid].leased_bytes = u.bytes;
    users[uid].jobs = u.jobs;
    users[uid].usage_gib_s = use;
  }
  for (const auto& [uid, rule] : quotas_.config().users) users[uid];
  for (const auto& [neg_priority, level] : fit_) {
    for (const auto& [uid, bucket] : level) users[uid].waiting += bucket.seqs.size();
  }
  std::vector<UserAccount> out;
  out.reserve(users.size());
  for (auto& [uid, account] : users) {
    account.uid = uid;
    const QuotaBook::Limits limits = quotas_.limits(uid);
    account.max_vram_bytes = limits.max_vram_bytes;
    account.max_jobs = limits.max_jobs;
    if (account.usage_gib_s == 0) account.usage_gib_s = usage_.usage(uid, now);
    out.push_back(account);
  }
  return out;
}

}  // namespace gpumgr::core
