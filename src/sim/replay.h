// Replays a trace on simulated devices through core::Scheduler on a virtual clock: the
// engine of `gpumgr simulate`. The scheduler is the very code the library's ledger runs, so
// a replay measures the policies users get, not a model of them.
//
// Each job asks for its lease at its arrival (Scheduler::enqueue), holds it for its duration
// once granted and then releases it; after every batch of releases at one instant a
// scheduling pass runs. Nothing else runs: no foreign memory, no failures, no deadlines.
// Arrivals at the same instant are enqueued in file order, after that instant's releases.
//
// Pure function over its arguments: any thread may call replay() (each call has its own
// scheduler).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/scheduler.h"
#include "gpumgr/ledger.h"
#include "gpumgr/status.h"
#include "sim/lower_bound.h"
#include "sim/residency.h"
#include "sim/trace.h"

namespace gpumgr::sim {

// What happened to one job, in trace (file) order.
struct SimJob {
  std::string job_id;
  double arrival_s = 0;
  double start_s = 0;  // when the lease was granted
  double end_s = 0;    // start + duration (+ the model's load time when it loaded it)
  std::vector<int> devices;
  bool loaded_model = false;  // it loaded its model (trace `model` column)
};

struct SimReport {
  std::string policy;  // "fifo", "greedy", "best-fit", ... (see policy_name)
  std::size_t jobs = 0;
  // From time 0 (traces start at 0) to the last release; 0 for an empty trace.
  double makespan_s = 0;
  LowerBound lower_bound;
  double lower_bound_s = 0;     // lower_bound.value_s
  double makespan_over_lb = 0;  // 1 when both are 0
  // Waits (grant - arrival) over all jobs; p50 and p99 are nearest-rank percentiles.
  double mean_wait_s = 0;
  double p50_wait_s = 0;
  double p99_wait_s = 0;
  double max_wait_s = 0;
  // Mean fraction of the pool's total lease capacity that was leased over [0, makespan].
  double utilization = 0;
  // Revocable jobs (the trace's preemptible and resident columns): revocations take effect
  // at once; a preempted job starts over from its beginning (its start is the last grant).
  std::uint64_t preemptions = 0;
  std::uint64_t residents_unloaded = 0;
  // Per user of the trace's `user` column (one entry, named "", without the column), in
  // order of first appearance: waits, and mean slowdown (wait + duration) / duration, with
  // durations below 1 s counted as 1 s (a bounded slowdown: a 1 ms job that waits 1 s is
  // not a 1000-fold slowdown).
  struct User {
    std::string name;
    std::size_t jobs = 0;
    double mean_wait_s = 0;
    double max_wait_s = 0;
    double mean_slowdown = 0;
  };
  std::vector<User> users;
  // Jain's fairness index of the users' mean slowdowns: (sum x)^2 / (n sum x^2), 1 when every
  // user is slowed alike, 1/n when one user takes all the slowdown; 1 for one user.
  double jain_fairness = 1;
  // Jobs on models (the trace's `model` column; residency.h): how they were run, "unload" or
  // "resident", empty for a trace without them; what the models cost; and the mean time from
  // a job's arrival to its end, which the loads lengthen where waits do not show them.
  std::string residency;
  ModelFigures models;
  double mean_turnaround_s = 0;
  std::vector<SimJob> timeline;
};

// The bounded slowdown's floor on a job's duration, in seconds (SimReport::User).
inline constexpr double kSlowdownMinDurationS = 1;

// The name a report gives a policy pair: "fifo" or "greedy" for that queue with best-fit
// placement (what `--policy fifo` and `--policy greedy` mean), the placement's name for
// backfill, else "<queue>/<placement>".
std::string policy_name(PlacementPolicy placement, QueuePolicy queue);

// Replays `jobs` on devices of `device_sizes` bytes each (their capacity is
// floor(memory_limit x size), as in the library). Errors: no devices, memory_limit outside
// (0, 1], max_concurrent_jobs < 1, reserve_after_holds negative or not finite, times beyond
// 290 years, and any job the scheduler refuses (e.g. kNeverFits: larger than every device's
// capacity), named by its job id. `reserve_after_holds` and `duration_backfill` are
// SchedulerConfig's (the backfill queue's aging, and backfill by the expected holds the
// scheduler learns per job kind from the trace's `kind` column; the library's defaults
// unless given). Each user of the trace is a uid of its own (fair share orders them by use
// within a priority, with `fair_share_half_life_s`, > 0). Jobs on models are run as
// `residency` says (residency.h); the lower bound is computed on the leases of unload mode
// (weights + working memory for load + duration) and on working memory and durations alone
// in resident mode, where a job may run on a model already loaded.
StatusOr<SimReport> replay(const std::vector<TraceJob>& jobs,
                           const std::vector<std::uint64_t>& device_sizes, double memory_limit,
                           PlacementPolicy placement, QueuePolicy queue, int max_concurrent_jobs,
                           double reserve_after_holds = core::SchedulerConfig{}.reserve_after_holds,
                           bool duration_backfill = core::SchedulerConfig{}.duration_backfill,
                           bool fair_share = core::SchedulerConfig{}.fair_share,
                           double fair_share_half_life_s = 3600,
                           Residency residency = Residency::kUnload);

}  // namespace gpumgr::sim
