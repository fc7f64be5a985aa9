#include "core/quota.h"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <cmath>
#include <sstream>

#include "gpumgr/units.h"

namespace gpumgr::core {
namespace {

Status exceeded(std::string message) {
  return Status(ErrorCode::kQuotaExceeded, std::move(message));
}

std::string share_text(double share) {
  std::ostringstream out;
  out << share * 100 << "%";
  return out.str();
}

// One rule's refusal of the request, if any. `who` says whose quota it is ("uid 1000").
Status check_rule(const QuotaRule& rule, const LeaseRequest& r, const std::string& who,
                  std::uint64_t host_capacity_bytes) {
  const QuotaLimits& q = rule.limits;
  auto scope = [&](bool from_default) {
    return from_default ? std::string("quota.default") : rule.scope;
  };
  if (q.max_priority && r.priority > *q.max_priority) {
    return exceeded("priority " + std::to_string(r.priority) + " is above the highest that " + who +
                    " may ask for, " + std::to_string(*q.max_priority) + " (" +
                    scope(rule.priority_from_default) + ".max_priority)");
  }
  if (q.max_jobs && *q.max_jobs <= 0) {
    return exceeded(who + " may run no jobs (" + scope(rule.jobs_from_default) + ".max_jobs = 0)");
  }
  if (r.bytes > 0) {
    // Per device times devices: the VRAM the lease holds in all. Both are bounded (a device's
    // memory, the device count), so the product does not overflow.
    const std::uint64_t total = r.bytes * static_cast<std::uint64_t>(std::max(r.gpus, 1));
    std::optional<std::uint64_t> limit;
    std::string limit_text;
    if (q.max_vram_bytes) {
      limit = *q.max_vram_bytes;
      limit_text = format_bytes(*limit);
    }
    if (q.max_vram_share) {
      const auto share_bytes = static_cast<std::uint64_t>(
          std::floor(static_cast<double>(host_capacity_bytes) * *q.max_vram_share));
      if (!limit || share_bytes < *limit) {
        limit = share_bytes;
        limit_text = share_text(*q.max_vram_share) + " of the host's " +
                     format_bytes(host_capacity_bytes) + ", " + format_bytes(share_bytes);
      }
    }
    if (limit && total > *limit) {
      return exceeded("the request for " + format_bytes(total) +
                      (r.gpus > 1 ? " (" + format_bytes(r.bytes) + " on each of " +
                                        std::to_string(r.gpus) + " GPUs)"
                                  : std::string()) +
                      " can never fit the quota of " + who + ": at most " + limit_text +
                      " leased at once (" + scope(rule.vram_from_default) + ".max_vram)");
    }
  }
  return Status::Ok();
}

}  // namespace

std::optional<QuotaRule> user_rule(const QuotaConfig& config, std::uint32_t uid) {
  const auto it = config.users.find(uid);
  if (it == config.users.end()) return config.default_rule;
  QuotaRule rule = it->second;
  if (config.default_rule) {
    const QuotaLimits& d = config.default_rule->limits;
    QuotaLimits& u = rule.limits;
    // max_vram as a whole: a size in the user's table replaces a share in the default.
    if (!u.max_vram_bytes && !u.max_vram_share) {
      u.max_vram_bytes = d.max_vram_bytes;
      u.max_vram_share = d.max_vram_share;
      rule.vram_from_default = true;
    }
    if (!u.max_jobs) {
      u.max_jobs = d.max_jobs;
      rule.jobs_from_default = true;
    }
    if (!u.max_priority) {
      u.max_priority = d.max_priority;
      rule.priority_from_default = true;
    }
  }
  return rule;
}

Status check_quota_admission(const QuotaConfig& config, const LeaseRequest& request,
                             std::uint32_t uid, std::span<const std::uint32_t> gids,
                             std::uint64_t host_capacity_bytes) {
  if (config.empty()) return Status::Ok();
  if (auto rule = user_rule(config, uid)) {
    if (Status s = check_rule(*rule, request, "uid " + std::to_string(uid), host_capacity_bytes);
        !s.ok()) {
      return s;
    }
  }
  for (std::uint32_t gid : gids) {
    const auto it = config.groups.find(gid);
    if (it == config.groups.end()) continue;
    if (Status s =
            check_rule(it->second, request, "group " + std::to_string(gid), host_capacity_bytes);
        !s.ok()) {
      return s;
    }
  }
  return Status::Ok();
}

std::vector<std::uint32_t> groups_of(std::uint32_t uid) {
  std::vector<char> buffer(16384);
  passwd pw{};
  passwd* found = nullptr;
  if (::getpwuid_r(static_cast<uid_t>(uid), &pw, buffer.data(), buffer.size(), &found) != 0 ||
      found == nullptr) {
    return {};
  }
  int count = 64;
  std::vector<gid_t> gids(static_cast<std::size_t>(count));
  if (::getgrouplist(pw.pw_name, pw.pw_gid, gids.data(), &count) < 0) {
    gids.resize(static_cast<std::size_t>(count));
    if (::getgrouplist(pw.pw_name, pw.pw_gid, gids.data(), &count) < 0) return {};
  }
  gids.resize(static_cast<std::size_t>(count));
  return {gids.begin(), gids.end()};
}

}  // namespace gpumgr::core
