#include "sim/lower_bound.h"

#include <algorithm>
#include <set>

namespace gpumgr::sim {

std::string_view LowerBound::binding() const {
  if (value_s == release_s) return "release";
  if (value_s == area_s) return "area";
  return "exclusive";
}

LowerBound makespan_lower_bound(const std::vector<TraceJob>& jobs,
                                const std::vector<std::uint64_t>& capacities) {
  LowerBound bound;
  // Sums and quotients in long double: the replay snaps the terms to its nanosecond grid,
  // which needs them within a fraction of a nanosecond of the exact values.
  using Real = long double;
  Real release = 0;
  for (const TraceJob& job : jobs) {
    release = std::max(release, Real{job.arrival_s} + Real{job.duration_s});
  }
  bound.release_s = static_cast<double>(release);
  bound.value_s = bound.release_s;
  if (capacities.empty() || jobs.empty()) return bound;

  // Latest arrival first: walking this order, the jobs seen so far are exactly those that
  // arrive at or after the current one's arrival, so each suffix sum is one addition. The
  // value at a job whose arrival ties with later-visited ones undercounts the suffix, which is
  // still a valid (smaller) bound; the last of the tie sees the full sum.
  std::vector<const TraceJob*> order;
  order.reserve(jobs.size());
  for (const TraceJob& job : jobs) order.push_back(&job);
  std::sort(order.begin(), order.end(),
            [](const TraceJob* a, const TraceJob* b) { return a->arrival_s > b->arrival_s; });

  // (b) the area term.
  Real total_capacity = 0;
  for (std::uint64_t c : capacities) total_capacity += static_cast<Real>(c);
  if (total_capacity > 0) {
    Real area = 0;  // byte-seconds arriving at or after t
    Real best = 0;
    for (const TraceJob* job : order) {
      area += static_cast<Real>(job->vram_bytes) * job->gpus * Real{job->duration_s};
      best = std::max(best, Real{job->arrival_s} + area / total_capacity);
    }
    bound.area_s = static_cast<double>(best);
  }

  // (c) the exclusive term, once per distinct capacity as the threshold.
  const std::set<std::uint64_t> thresholds(capacities.begin(), capacities.end());
  for (std::uint64_t c : thresholds) {
    if (c == 0) continue;
    // k jobs each larger than c/2 need more than k*c/2 bytes, so a device of capacity C holds
    // k of them only when k*c < 2C: at most floor((2C - 1) / c). For identical devices that
    // is 1 each, and slots == K.
    Real slots = 0;
    for (std::uint64_t cap : capacities) {
      if (cap > 0) slots += static_cast<Real>((2 * cap - 1) / c);
    }
    if (slots <= 0) continue;
    Real device_seconds = 0;  // of large jobs arriving at or after t
    Real best = 0;
    for (const TraceJob* job : order) {
      if (2 * job->vram_bytes <= c) continue;
      device_seconds += job->gpus * Real{job->duration_s};
      best = std::max(best, Real{job->arrival_s} + device_seconds / slots);
    }
    bound.exclusive_s = std::max(bound.exclusive_s, static_cast<double>(best));
  }

  bound.value_s = std::max({bound.release_s, bound.area_s, bound.exclusive_s});
  return bound;
}

LowerBound makespan_lower_bound(const std::vector<TraceJob>& jobs, int devices,
                                std::uint64_t capacity) {
  return makespan_lower_bound(
      jobs, std::vector<std::uint64_t>(static_cast<std::size_t>(std::max(devices, 0)), capacity));
}

}  // namespace gpumgr::sim
