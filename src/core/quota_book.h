// QuotaBook: what each user and group holds against its quota ([quota.*], docs/config.md),
// for the scheduler's question "may this waiter start without taking its user, or one of its
// groups, over max_vram or max_jobs?". The scheduler charges every grant and discharges every
// release (adopted leases too), so the counters are the active leases' sums, per uid and per
// gid; a group's figures are its members' together.
//
// The limits of a uid are its [quota.user.X] table with [quota.default] for the keys it does
// not set (user_rule), and each [quota.group.G] of a group it belongs to. Group membership
// comes from the resolver given to configure() (the system's user database in the daemon, a
// table in tests and the simulator), asked once per uid and again at each configure(), so
// that a reload sees new members.
//
// A reload (configure) keeps the counters: a lowered quota ends no lease; it only keeps new
// ones from starting until the user's use is below it.
//
// Not thread-safe: the Scheduler owns it and its owner serialises every call.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/quota.h"
#include "gpumgr/ledger.h"
#include "gpumgr/status.h"

namespace gpumgr::core {

class QuotaBook {
 public:
  using GroupResolver = std::function<std::vector<std::uint32_t>(std::uint32_t uid)>;
  static constexpr std::uint64_t kUnlimited = std::numeric_limits<std::uint64_t>::max();

  // Installs the limits (at start and at each reload). `groups` says which groups a uid is
  // in; empty: none. The counters stay as they are.
  void configure(QuotaConfig config, GroupResolver groups);
  const QuotaConfig& config() const { return config_; }
  // What a share ("50%") is of: the host's capacity for leases (the sum over its devices).
  void set_host_capacity(std::uint64_t bytes) { host_capacity_ = bytes; }
  std::uint64_t host_capacity() const { return host_capacity_; }
  // Whether any quota is configured (without one, every grant is allowed).
  bool limited() const { return limited_; }

  struct Usage {
    std::uint64_t bytes = 0;  // VRAM leased: each lease's size times its devices
    std::uint64_t jobs = 0;   // active leases
  };
  // What `uid` may still take now: the least headroom of its own quota and its groups'.
  // kUnlimited where no limit applies; bytes 0 when a max_jobs is reached.
  struct Headroom {
    std::uint64_t bytes = kUnlimited;
    std::uint64_t jobs = kUnlimited;
  };
  Headroom headroom(std::uint32_t uid);
  // Whether one more lease of `bytes` (size times devices) keeps `uid` and its groups within
  // their max_vram and max_jobs.
  bool allows(std::uint32_t uid, std::uint64_t bytes) {
    if (!limited_) return true;
    const Headroom h = headroom(uid);
    return h.jobs >= 1 && bytes <= h.bytes;
  }
  // Why a lease of `bytes` for `uid` waits: the first quota it would exceed, its use and its
  // limit ("uid 1000 holds 6 GiB of its 8 GiB (quota.default.max_vram)"); empty when none.
  std::string why_waiting(std::uint32_t uid, std::uint64_t bytes);
  // check_quota_admission() under these limits: kQuotaExceeded for a request that can never
  // fit them, whatever the user holds.
  Status check_admission(const LeaseRequest& request, std::uint32_t uid);

  void charge(std::uint32_t uid, std::uint64_t bytes);
  void discharge(std::uint32_t uid, std::uint64_t bytes);

  // The counters of a uid, and of a gid (its members together).
  Usage usage(std::uint32_t uid) const;
  Usage group_usage(std::uint32_t gid) const;

  // A user's own limits and those of its groups, resolved to bytes and counts: the tightest
  // of each (nullopt: none), for display.
  struct Limits {
    std::optional<std::uint64_t> max_vram_bytes;
    std::optional<std::uint64_t> max_jobs;
  };
  Limits limits(std::uint32_t uid);
  // Every uid the book has seen (a lease, a question), in no order.
  std::vector<std::uint32_t> known_users() const;

 private:
  struct Account {
    Usage usage;
    std::optional<QuotaRule> rule;    // user_rule(config_, uid)
    std::vector<std::uint32_t> gids;  // its groups that have a [quota.group.*] table
    bool resolved = false;
  };
  Account& account(std::uint32_t uid);
  void resolve(std::uint32_t uid, Account& account);
  // A rule's max_vram in bytes (a share of host_capacity_), or nullopt.
  std::optional<std::uint64_t> vram_limit(const QuotaLimits& limits) const;

  QuotaConfig config_;
  GroupResolver groups_;
  bool limited_ = false;
  std::uint64_t host_capacity_ = 0;
  std::unordered_map<std::uint32_t, Account> accounts_;
  std::unordered_map<std::uint32_t, Usage> group_usage_;  // gids with a rule only
};

}  // namespace gpumgr::core
