#include "core/quota_book.h"

#include <algorithm>
#include <cmath>

#include "gpumgr/units.h"

namespace gpumgr::core {

void QuotaBook::configure(QuotaConfig config, GroupResolver groups) {
  config_ = std::move(config);
  groups_ = std::move(groups);
  limited_ = !config_.empty();
  // Group figures are sums over members: rebuilt from each member's counters under the new
  // membership, so that a group's use is right however its table or its members changed.
  group_usage_.clear();
  for (auto& [uid, a] : accounts_) {
    a.resolved = false;
    resolve(uid, a);
  }
}

void QuotaBook::resolve(std::uint32_t uid, Account& a) {
  a.rule = user_rule(config_, uid);
  a.gids.clear();
  if (!config_.groups.empty() && groups_) {
    for (const std::uint32_t gid : groups_(uid)) {
      if (config_.groups.count(gid) != 0 &&
          std::find(a.gids.begin(), a.gids.end(), gid) == a.gids.end()) {
        a.gids.push_back(gid);
      }
    }
  }
  for (const std::uint32_t gid : a.gids) {
    Usage& g = group_usage_[gid];
    g.bytes += a.usage.bytes;
    g.jobs += a.usage.jobs;
  }
  a.resolved = true;
}

QuotaBook::Account& QuotaBook::account(std::uint32_t uid) {
  Account& a = accounts_[uid];
  if (!a.resolved) resolve(uid, a);
  return a;
}

std::optional<std::uint64_t> QuotaBook::vram_limit(const QuotaLimits& q) const {
  std::optional<std::uint64_t> limit = q.max_vram_bytes;
  if (q.max_vram_share) {
    const auto share = static_cast<std::uint64_t>(
        std::floor(static_cast<double>(host_capacity_) * *q.max_vram_share));
    if (!limit || share < *limit) limit = share;
  }
  return limit;
}

namespace {
// What is left of a limit after `used` (0 when already at or over it: a lowered quota).
std::uint64_t left(std::uint64_t limit, std::uint64_t used) {
  return used >= limit ? 0 : limit - used;
}
}  // namespace

QuotaBook::Headroom QuotaBook::headroom(std::uint32_t uid) {
  Headroom h;
  if (!limited_) return h;
  Account& a = account(uid);
  auto apply = [&](const QuotaLimits& q, const Usage& used) {
    if (const auto v = vram_limit(q)) h.bytes = std::min(h.bytes, left(*v, used.bytes));
    if (q.max_jobs) {
      const auto jobs = static_cast<std::uint64_t>(std::max(*q.max_jobs, 0LL));
      h.jobs = std::min(h.jobs, left(jobs, used.jobs));
    }
  };
  if (a.rule) apply(a.rule->limits, a.usage);
  for (const std::uint32_t gid : a.gids) apply(config_.groups.at(gid).limits, group_usage_[gid]);
  if (h.jobs == 0) h.bytes = 0;
  return h;
}

std::string QuotaBook::why_waiting(std::uint32_t uid, std::uint64_t bytes) {
  if (!limited_) return {};
  Account& a = account(uid);
  auto check = [&](const QuotaRule& rule, const Usage& used, const std::string& who,
                   bool vram_from_default, bool jobs_from_default) -> std::string {
    const QuotaLimits& q = rule.limits;
    if (q.max_jobs && used.jobs + 1 > static_cast<std::uint64_t>(std::max(*q.max_jobs, 0LL))) {
      return who + " runs " + std::to_string(used.jobs) + " of its " + std::to_string(*q.max_jobs) +
             " jobs (" + (jobs_from_default ? std::string("quota.default") : rule.scope) +
             ".max_jobs)";
    }
    if (const auto v = vram_limit(q); v && (used.bytes > *v || bytes > *v - used.bytes)) {
      return who + " holds " + format_bytes(used.bytes) + " of its " + format_bytes(*v) + " (" +
             (vram_from_default ? std::string("quota.default") : rule.scope) + ".max_vram)";
    }
    return {};
  };
  if (a.rule) {
    std::string why = check(*a.rule, a.usage, "uid " + std::to_string(uid),
                            a.rule->vram_from_default, a.rule->jobs_from_default);
    if (!why.empty()) return why;
  }
  for (const std::uint32_t gid : a.gids) {
    std::string why = check(config_.groups.at(gid), group_usage_[gid],
                            "group " + std::to_string(gid), false, false);
    if (!why.empty()) return why;
  }
  return {};
}

Status QuotaBook::check_admission(const LeaseRequest& request, std::uint32_t uid) {
  if (!limited_) return Status::Ok();
  const Account& a = account(uid);
  return check_quota_admission(config_, request, uid, a.gids, host_capacity_);
}

void QuotaBook::charge(std::uint32_t uid, std::uint64_t bytes) {
  Account& a = account(uid);
  a.usage.bytes += bytes;
  ++a.usage.jobs;
  for (const std::uint32_t gid : a.gids) {
    Usage& g = group_usage_[gid];
    g.bytes += bytes;
    ++g.jobs;
  }
}

void QuotaBook::discharge(std::uint32_t uid, std::uint64_t bytes) {
  Account& a = account(uid);
  // Never below zero: a release matches a charge, but a counter that wrapped would block the
  // user for good.
  auto take = [bytes](Usage& u) {
    u.bytes -= std::min(u.bytes, bytes);
    if (u.jobs > 0) --u.jobs;
  };
  take(a.usage);
  for (const std::uint32_t gid : a.gids) take(group_usage_[gid]);
}

QuotaBook::Usage QuotaBook::usage(std::uint32_t uid) const {
  const auto it = accounts_.find(uid);
  return it == accounts_.end() ? Usage{} : it->second.usage;
}

QuotaBook::Usage QuotaBook::group_usage(std::uint32_t gid) const {
  const auto it = group_usage_.find(gid);
  return it == group_usage_.end() ? Usage{} : it->second;
}

QuotaBook::Limits QuotaBook::limits(std::uint32_t uid) {
  Limits out;
  if (!limited_) return out;
  Account& a = account(uid);
  auto apply = [&](const QuotaLimits& q) {
    if (const auto v = vram_limit(q)) {
      out.max_vram_bytes = std::min(out.max_vram_bytes.value_or(kUnlimited), *v);
    }
    if (q.max_jobs) {
      const auto jobs = static_cast<std::uint64_t>(std::max(*q.max_jobs, 0LL));
      out.max_jobs = std::min(out.max_jobs.value_or(kUnlimited), jobs);
    }
  };
  if (a.rule) apply(a.rule->limits);
  for (const std::uint32_t gid : a.gids) apply(config_.groups.at(gid).limits);
  return out;
}

std::vector<std::uint32_t> QuotaBook::known_users() const {
  std::vector<std::uint32_t> out;
  out.reserve(accounts_.size());
  for (const auto& [uid, a] : accounts_) out.push_back(uid);
  return out;
}

}  // namespace gpumgr::core
