// Revocable leases in the ledger (docs/scheduling.md, "Revocable leases"): the scheduler
// decides what to revoke (Scheduler::take_revocations, revocation_plan.cpp); the ledger
// tells the holder, gives it a grace period, and at the grace's end kills the holder's
// process tree and releases the lease. RevocationDeadlines keeps those grace periods.
//
// Not synchronised: LocalLedger calls it under its mutex. Time is passed in.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/scheduler.h"

namespace gpumgr::core {

// "preemptible", "resident", or "" for a lease that cannot be revoked.
std::string_view revocable_name(Revocable revocable);

class RevocationDeadlines {
 public:
  // The lease `lease_id` of `job_id` must be released by `deadline`.
  void add(std::string_view job_id, std::uint64_t lease_id, TimeNs deadline);
  // The lease was released (by its holder or at its deadline).
  void forget(std::string_view job_id);
  bool empty() const { return by_job_.empty(); }
  // The earliest deadline, if any.
  std::optional<TimeNs> next() const;
  // The deadline of a job's revocation, if it is being revoked.
  std::optional<TimeNs> deadline(std::string_view job_id) const;
  // Removes and returns (job id, lease id) of every revocation whose deadline is <= now.
  std::vector<std::pair<std::string, std::uint64_t>> take_due(TimeNs now);

 private:
  struct Entry {
    std::uint64_t lease_id = 0;
    TimeNs deadline = 0;
  };
  // Few leases are revoked at a time: a scan for the next deadline is cheap.
  std::unordered_map<std::string, Entry, JobIdHash, std::equal_to<>> by_job_;
};

}  // namespace gpumgr::core
