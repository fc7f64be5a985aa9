// An exact (offline, clairvoyant) scheduler for tiny traces: the minimum makespan over every
// feasible schedule, by branch and bound. A test helper, not part of the library: it checks
// that the makespan lower bound (src/sim/lower_bound.h) is never above the optimum, and
// measures how far the online policies are from it (docs/simulate.md).
//
// The model is the replay's: job j arrives at r_j and holds m_j bytes on each of g_j distinct
// devices for p_j without interruption; on every device the leases held at any instant sum
// to at most its capacity. There is no concurrency limit.
//
// Why the search is exact: take an optimal schedule S and list its jobs by start time. Placing
// them in that order, each on its device(s) in S at the earliest time that is at least its
// arrival and at least the previous job's start, where it fits beside the jobs already
// placed, starts every job no later than in S (by induction: the jobs placed before it start
// no later than in S and no later than it, so over [its start in S, oo) they hold no more than
// in S). The search enumerates exactly such placements (every order, every device choice),
// so it finds a schedule at least as good as S. Because starts never decrease, the memory
// held on a device after the current start time can only fall: a job fits at t for its
// whole hold if it fits at t.
//
// Pure functions; any thread may call them. Exponential: meant for up to about 8 jobs.
#pragma once

#include <cstdint>
#include <vector>

#include "sim/trace.h"

namespace gpumgr::sim::testing {

struct ExactPlacement {
  double start_s = 0;
  std::vector<int> devices;
};

struct ExactResult {
  double makespan_s = 0;
  std::vector<ExactPlacement> schedule;  // in the order of the jobs given
  std::uint64_t nodes = 0;               // search nodes visited
};

// The optimum for `jobs` on devices of lease capacity `capacities` (bytes). Every job must
// fit the pool when it is empty (m_j <= the g_j-th largest capacity).
ExactResult exact_min_makespan(const std::vector<TraceJob>& jobs,
                               const std::vector<std::uint64_t>& capacities);

// Whether `schedule` is feasible for `jobs` on `capacities` (checked independently of the
// search: starts after arrivals, distinct devices, capacity at every start instant).
bool schedule_is_feasible(const std::vector<TraceJob>& jobs,
                          const std::vector<std::uint64_t>& capacities,
                          const std::vector<ExactPlacement>& schedule);

}  // namespace gpumgr::sim::testing
