// Quotas: per-user and per-group limits on leases ([quota.*] in the daemon's configuration
// file, docs/config.md): the most VRAM leased at once (a size, or a share of the host's
// capacity), the most concurrent jobs, the highest priority allowed.
//
// This room holds the part that admission decides alone, without the scheduler: a request
// that can never fit its quota (more VRAM than the quota's max_vram, a max_jobs of 0) or that
// asks for a priority above max_priority is refused at once with kQuotaExceeded. Waiting for
// quota (a request beyond its user's current headroom waits until that user's own leases
// end) belongs to the scheduler and is not done here.
//
// Plain values and pure functions, except groups_of() (the system's user database): any
// thread may call them.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "gpumgr/ledger.h"
#include "gpumgr/status.h"

namespace gpumgr::core {

struct QuotaLimits {
  std::optional<std::uint64_t> max_vram_bytes;
  std::optional<double> max_vram_share;  // of the host's capacity, in (0, 1]
  std::optional<long long> max_jobs;     // 0: no jobs at all
  std::optional<int> max_priority;
  bool operator==(const QuotaLimits&) const = default;
};

// One [quota.*] table.
struct QuotaRule {
  std::string scope;  // "quota.default", "quota.user.alice", "quota.group.students"
  QuotaLimits limits;
  // user_rule(): the keys taken from [quota.default], so that a refusal names where its
  // limit is written.
  bool vram_from_default = false;
  bool jobs_from_default = false;
  bool priority_from_default = false;
  bool operator==(const QuotaRule&) const = default;
};

struct QuotaConfig {
  std::optional<QuotaRule> default_rule;
  std::map<std::uint32_t, QuotaRule> users;   // by uid
  std::map<std::uint32_t, QuotaRule> groups;  // by gid: a limit on its members together
  bool empty() const { return !default_rule && users.empty() && groups.empty(); }
  bool operator==(const QuotaConfig&) const = default;
};

// A user's own limits: its [quota.user.X] table, each key it does not set taken from
// [quota.default]; nullopt when neither exists.
std::optional<QuotaRule> user_rule(const QuotaConfig& config, std::uint32_t uid);

// OK, or kQuotaExceeded naming the quota, the limit and the request, when the request can
// never be granted under the quotas of `uid` (its own, and those of `gids`, its groups):
// its VRAM (bytes x gpus) above a max_vram, a max_jobs of 0, a priority above max_priority.
// `host_capacity_bytes` is what a share ("50%") is of. A request for a kind's estimate
// (bytes 0) is not checked for VRAM: its size is known only once the ledger resolves it.
Status check_quota_admission(const QuotaConfig& config, const LeaseRequest& request,
                             std::uint32_t uid, std::span<const std::uint32_t> gids,
                             std::uint64_t host_capacity_bytes);

// The groups of a uid (its primary group and its supplementary groups), from the system's
// user database; empty for a uid it does not know.
std::vector<std::uint32_t> groups_of(std::uint32_t uid);

}  // namespace gpumgr::core
