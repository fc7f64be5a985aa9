// A lower bound on the makespan of a trace on a device pool: what no scheduler, online or
// offline, can beat. `gpumgr simulate` reports makespan / bound so that a policy's quality is
// judged against the trace itself rather than only against another policy. docs/simulate.md
// derives each term.
//
// Pure functions over their arguments: any thread may call them.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "sim/trace.h"

namespace gpumgr::sim {

// The three terms (seconds from time 0) and their maximum. Each term alone is a valid bound;
// `binding()` names the one that gives the maximum, so that reports can say why the bound is
// what it is.
struct LowerBound {
  // (a) max_j (r_j + p_j): no job ends before it arrived and ran.
  double release_s = 0;
  // (b) max_t t + (sum_{r_j >= t} m_j g_j p_j) / (total capacity): the bytes x seconds that
  // arrive at or after t cannot be leased faster than the whole pool allows.
  double area_s = 0;
  // (c) max_t t + (sum_{r_j >= t, m_j > M/2} g_j p_j) / K: jobs larger than half a device
  // cannot share one, so they run at most K (one per device) at a time.
  double exclusive_s = 0;
  double value_s = 0;  // max of the three
  // "release", "area" or "exclusive" (the first of them, in that order, on a tie).
  std::string_view binding() const;
};

// The bound for `jobs` on devices whose lease capacities (bytes leases may hold, i.e.
// floor(memory_limit * total)) are `capacities`. For identical devices this is exactly terms
// (a)-(c) above. For a mixed pool, (b) uses the summed capacity and (c) is taken for each
// distinct capacity c as a threshold: jobs with m_j > c/2 are "large", a device of capacity
// C_d holds at most ceil(2 C_d / c) - 1 of them at once, and the term divides by the sum of
// those counts; the largest over the thresholds is kept. Jobs that fit no device are counted
// as they are (a replay rejects them anyway). O(n log n * distinct capacities).
LowerBound makespan_lower_bound(const std::vector<TraceJob>& jobs,
                                const std::vector<std::uint64_t>& capacities);

// The same for `devices` identical devices of lease capacity `capacity` bytes.
LowerBound makespan_lower_bound(const std::vector<TraceJob>& jobs, int devices,
                                std::uint64_t capacity);

}  // namespace gpumgr::sim
