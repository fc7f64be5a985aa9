#include "exact_scheduler.h"

#include <algorithm>
#include <bit>
#include <limits>

namespace gpumgr::sim::testing {
namespace {

struct Placed {
  double start = 0;
  double end = 0;
  std::uint64_t bytes = 0;
  unsigned mask = 0;  // devices
};

class Search {
 public:
  Search(const std::vector<TraceJob>& jobs, const std::vector<std::uint64_t>& caps)
      : jobs_(jobs), caps_(caps), chosen_(jobs.size()), best_schedule_(jobs.size()) {
    for (const std::uint64_t c : caps) total_capacity_ += static_cast<double>(c);
    double area = 0;
    for (const TraceJob& j : jobs) {
      area += static_cast<double>(j.vram_bytes) * j.gpus * j.duration_s;
    }
    remaining_area_ = area;
    for (unsigned s = 1; s < (1u << caps.size()); ++s) subsets_.push_back(s);
  }

  ExactResult run() {
    dfs((1u << jobs_.size()) - 1, 0, 0);
    ExactResult r;
    r.makespan_s = best_;
    r.nodes = nodes_;
    for (std::size_t i = 0; i < jobs_.size(); ++i) {
      r.schedule.push_back(best_schedule_[i]);
    }
    return r;
  }

 private:
  // Bytes held on device d at instant t by the jobs placed so far.
  std::uint64_t usage(int d, double t) const {
    std::uint64_t sum = 0;
    for (const Placed& p : placed_) {
      if ((p.mask >> d & 1u) != 0 && p.start <= t && t < p.end) sum += p.bytes;
    }
    return sum;
  }

  bool fits(unsigned mask, std::uint64_t bytes, double t) const {
    for (std::size_t d = 0; d < caps_.size(); ++d) {
      if ((mask >> d & 1u) == 0) continue;
      if (usage(static_cast<int>(d), t) + bytes > caps_[d]) return false;
    }
    return true;
  }

  // The earliest t >= t0 at which `bytes` fits on every device of `mask`: t0 or the end of a
  // placed job (memory only frees at ends, and after the last start it never grows).
  double earliest(unsigned mask, std::uint64_t bytes, double t0) const {
    if (fits(mask, bytes, t0)) return t0;
    std::vector<double> ends;
    for (const Placed& p : placed_) {
      if (p.end > t0) ends.push_back(p.end);
    }
    std::sort(ends.begin(), ends.end());
    for (const double t : ends) {
      if (fits(mask, bytes, t)) return t;
    }
    return std::numeric_limits<double>::infinity();  // cannot happen for a job that fits
  }

  void dfs(unsigned remaining, double last_start, double max_end) {
    ++nodes_;
    if (remaining == 0) {
      if (max_end < best_) {
        best_ = max_end;
        best_schedule_ = chosen_;
      }
      return;
    }
    struct Child {
      double t;
      std::size_t job;
      unsigned mask;
    };
    std::vector<Child> children;
    for (std::size_t j = 0; j < jobs_.size(); ++j) {
      if ((remaining >> j & 1u) == 0) continue;
      const TraceJob& job = jobs_[j];
      const double t0 = std::max(job.arrival_s, last_start);
      for (const unsigned mask : subsets_) {
        if (std::popcount(mask) != job.gpus) continue;
        bool big_enough = true;
        for (std::size_t d = 0; d < caps_.size(); ++d) {
          if ((mask >> d & 1u) != 0 && caps_[d] < job.vram_bytes) big_enough = false;
        }
        if (!big_enough) continue;
        children.push_back({earliest(mask, job.vram_bytes, t0), j, mask});
      }
    }
    std::sort(children.begin(), children.end(),
              [](const Child& a, const Child& b) { return a.t < b.t; });
    for (const Child& c : children) {
      const TraceJob& job = jobs_[c.job];
      const unsigned rest = remaining & ~(1u << c.job);
      const double area = static_cast<double>(job.vram_bytes) * job.gpus * job.duration_s;
      // A lower bound on any completion of this branch: what is placed, each remaining job
      // starting no earlier than t, and the remaining area after t.
      double bound = std::max(max_end, c.t + job.duration_s);
      for (std::size_t k = 0; k < jobs_.size(); ++k) {
        if ((rest >> k & 1u) != 0) {
          bound = std::max(bound, std::max(jobs_[k].arrival_s, c.t) + jobs_[k].duration_s);
        }
      }
      bound = std::max(bound, c.t + (remaining_area_ - area) / total_capacity_);
      if (bound >= best_) continue;
      placed_.push_back({c.t, c.t + job.duration_s, job.vram_bytes, c.mask});
      chosen_[c.job].start_s = c.t;
      chosen_[c.job].devices.clear();
      for (std::size_t d = 0; d < caps_.size(); ++d) {
        if ((c.mask >> d & 1u) != 0) chosen_[c.job].devices.push_back(static_cast<int>(d));
      }
      remaining_area_ -= area;
      dfs(rest, c.t, std::max(max_end, c.t + job.duration_s));
      remaining_area_ += area;
      placed_.pop_back();
    }
  }

  const std::vector<TraceJob>& jobs_;
  const std::vector<std::uint64_t>& caps_;
  std::vector<unsigned> subsets_;
  std::vector<Placed> placed_;
  std::vector<ExactPlacement> chosen_;
  std::vector<ExactPlacement> best_schedule_;
  double best_ = std::numeric_limits<double>::infinity();
  double total_capacity_ = 0;
  double remaining_area_ = 0;
  std::uint64_t nodes_ = 0;
};

}  // namespace

ExactResult exact_min_makespan(const std::vector<TraceJob>& jobs,
                               const std::vector<std::uint64_t>& capacities) {
  if (jobs.empty()) return {};
  return Search(jobs, capacities).run();
}

bool schedule_is_feasible(const std::vector<TraceJob>& jobs,
                          const std::vector<std::uint64_t>& capacities,
                          const std::vector<ExactPlacement>& schedule) {
  if (schedule.size() != jobs.size()) return false;
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    const ExactPlacement& p = schedule[j];
    if (p.start_s < jobs[j].arrival_s) return false;
    if (p.devices.size() != static_cast<std::size_t>(jobs[j].gpus)) return false;
    std::vector<int> devices = p.devices;
    std::sort(devices.begin(), devices.end());
    if (std::adjacent_find(devices.begin(), devices.end()) != devices.end()) return false;
    for (const int d : devices) {
      if (d < 0 || static_cast<std::size_t>(d) >= capacities.size()) return false;
    }
  }
  // Memory on a device only grows at a start: checking every start instant checks all.
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    const double t = schedule[j].start_s;
    for (const int d : schedule[j].devices) {
      std::uint64_t held = 0;
      for (std::size_t k = 0; k < jobs.size(); ++k) {
        const double end = schedule[k].start_s + jobs[k].duration_s;
        const bool on_d = std::find(schedule[k].devices.begin(), schedule[k].devices.end(), d) !=
                          schedule[k].devices.end();
        // A job of zero duration still needs room at its start.
        const bool holds = schedule[k].start_s <= t && (t < end || (k == j));
        if (on_d && holds) held += jobs[k].vram_bytes;
      }
      if (held > capacities[static_cast<std::size_t>(d)]) return false;
    }
  }
  return true;
}

}  // namespace gpumgr::sim::testing
