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
  seen_.clear();
  for (const auto& [neg_priority, level] : fit_) {
    for (const auto& [uid, bucket] : level.users) {
      if (!seen_.insert(uid).second) continue;
      if (!quotas_.allows(uid, bucket.seqs.begin()->second.total)) held_.insert(uid);
    }
  }
}

std::map<Scheduler::Key, Scheduler::Waiter>::const_iterator Scheduler::head() const {
  if (queue_.empty()) return queue_.end();
  // Without quotas, and where the top priority's users are not ranked, the queue's first
  // waiter is the head (the hot path: one look).
  if (!quotas_.limited() && fit_.begin()->second.order.size() < 2) return queue_.begin();
  for (const auto& [neg_priority, level] : fit_) {
    std::optional<std::pair<int, std::uint64_t>> best;  // (user rank, seq)
    for (const auto& [uid, bucket] : level.users) {
      if (held(uid)) continue;
      const std::pair<int, std::uint64_t> candidate{bucket.rank, bucket.seqs.begin()->first};
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
        for (auto& [uid, bucket] : level.users) bucket.rank = 0;
        level.order.clear();
      }
      ranked_ = false;
    }
    return;
  }
  ranked_ = false;
  const auto aged_after = static_cast<double>(config_.fair_share_half_life) * kAgedHalfLives;
  // (aged first, then least use; aged users and ties by their earliest arrival here).
  std::vector<std::tuple<int, double, std::uint64_t, std::uint32_t>> order;
  use_now_.clear();  // each user's use, read once for all its priorities
  for (auto& [neg_priority, level] : fit_) {
    level.order.clear();
    if (level.users.size() < 2) {
      for (auto& [uid, bucket] : level.users) bucket.rank = 0;
      continue;
    }
    order.clear();
    for (const auto& [uid, bucket] : level.users) {
      const auto& [first, entry] = *bucket.seqs.begin();
      const bool aged = static_cast<double>(elapsed_ns(entry.requested_at, now)) >= aged_after;
      double use = 0;
      if (!aged) {
        const auto [it, added] = use_now_.try_emplace(uid, 0.0);
        if (added) it->second = usage_.usage(uid, now);
        use = it->second;
      }
      order.emplace_back(aged ? 0 : 1, use, first, uid);
    }
    std::sort(order.begin(), order.end());
    for (std::size_t i = 0; i < order.size(); ++i) {
      const std::uint32_t uid = std::get<3>(order[i]);
      level.users.at(uid).rank = static_cast<int>(i);
      level.order.push_back(uid);
    }
    ranked_ = true;
  }
}

Scheduler::Rank Scheduler::rank_of(const Key& key) const {
  const Waiter& w = queue_.at(key);
  return Rank{key.neg_priority, fit_.at(key.neg_priority).users.at(w.holder.uid).rank, key.seq};
}

std::optional<Scheduler::Rank> Scheduler::first_fitting_by_user(int neg_priority,
                                                                const Level& level) const {
  // The earliest waiter of one user among the fitting classes, within its quota.
  auto earliest_of = [&](std::uint32_t uid, const UserBucket& bucket) {
    std::optional<std::uint64_t> best;
    std::uint64_t quota_bytes = QuotaBook::kUnlimited;
    if (quotas_.limited()) {
      if (held(uid)) return best;
      const QuotaBook::Headroom room = quotas_.headroom(uid);
      if (room.jobs == 0) return best;
      quota_bytes = room.bytes;
    }
    for (const auto& [cls, limit] : fitting_) {
      const auto& indexes = bucket.indexes();
      const auto it = indexes.find(*cls);
      if (it == indexes.end()) continue;
      const auto seq = it->second.first_at_most(
          std::min(limit, quota_bytes / static_cast<std::uint64_t>(cls->gpus)));
      if (seq && (!best || *seq < *best)) best = seq;
    }
    return best;
  };
  if (level.order.size() >= 2) {
    // Ranked: the first user in order with a fitting waiter.
    for (const std::uint32_t uid : level.order) {
      const auto it = level.users.find(uid);
      if (it == level.users.end()) continue;  // its last waiter here started in this pass
      if (const auto seq = earliest_of(uid, it->second)) {
        return Rank{neg_priority, it->second.rank, *seq};
      }
    }
    return std::nullopt;
  }
  // Unranked (arrival order) with quotas: the earliest over the users.
  std::optional<Rank> found;
  for (const auto& [uid, bucket] : level.users) {
    if (const auto seq = earliest_of(uid, bucket)) {
      const Rank rank{neg_priority, 0, *seq};
      if (!found || rank < *found) found = rank;
    }
  }
  return found;
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
    for (const auto& [uid, bucket] : level.users) users[uid].waiting += bucket.seqs.size();
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
