// The makespan lower bound against the true optimum (tests/sim/exact_scheduler.h) on
// hundreds of random small instances on two devices: the bound is never above the optimum,
// the optimum is never above what any policy achieves, and the optimum's schedule is
// feasible. The default policy's mean and worst ratio to the optimum are printed (they are
// recorded in docs/simulate.md).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "exact_scheduler.h"
#include "gpumgr/units.h"
#include "sim/lower_bound.h"
#include "sim/replay.h"

namespace gpumgr::sim {
namespace {

using testing::exact_min_makespan;
using testing::schedule_is_feasible;

TraceJob job(std::string id, double arrival, std::uint64_t gib, double duration, int gpus = 1) {
  TraceJob j;
  j.job_id = std::move(id);
  j.arrival_s = arrival;
  j.vram_bytes = gib * kGiB;
  j.duration_s = duration;
  j.gpus = gpus;
  return j;
}

TEST(ExactOptimumTest, ThreeJobsLargerThanHalfADeviceOnTwoDevices) {
  // Three 6 GiB jobs of 10 s on two 10 GiB devices: no two share a device, so one device
  // runs two of them: 20 s. The bound's exclusive term gives 3 * 10 / 2 = 15.
  const std::vector<TraceJob> jobs = {job("a", 0, 6, 10), job("b", 0, 6, 10), job("c", 0, 6, 10)};
  const std::vector<std::uint64_t> caps = {10 * kGiB, 10 * kGiB};
  const testing::ExactResult r = exact_min_makespan(jobs, caps);
  EXPECT_DOUBLE_EQ(r.makespan_s, 20);
  EXPECT_TRUE(schedule_is_feasible(jobs, caps, r.schedule));
  EXPECT_DOUBLE_EQ(makespan_lower_bound(jobs, caps).value_s, 15);
}

TEST(ExactOptimumTest, FeasibilityCheckRejectsOverlapsAndEarlyStarts) {
  const std::vector<TraceJob> jobs = {job("a", 0, 6, 10), job("b", 1, 6, 10)};
  const std::vector<std::uint64_t> caps = {10 * kGiB, 10 * kGiB};
  EXPECT_TRUE(schedule_is_feasible(jobs, caps, {{0, {0}}, {1, {1}}}));
  EXPECT_FALSE(schedule_is_feasible(jobs, caps, {{0, {0}}, {5, {0}}}));  // 12 GiB on device 0
  EXPECT_FALSE(schedule_is_feasible(jobs, caps, {{0, {0}}, {0, {1}}}));  // b before it arrives
  EXPECT_TRUE(schedule_is_feasible(jobs, caps, {{0, {0}}, {10, {0}}}));  // back to back
}

struct Ratios {
  double sum = 0;
  double worst = 0;  // the largest
  double least = 1e300;
  int n = 0;
  void add(double r) {
    sum += r;
    worst = std::max(worst, r);
    least = std::min(least, r);
    ++n;
  }
  double mean() const { return n == 0 ? 0 : sum / n; }
};

TEST(ExactOptimumTest, BoundNeverAboveOptimumOnRandomInstances) {
  std::mt19937_64 rng(20261202);
  constexpr int kInstances = 300;
  Ratios lb_over_opt;
  const char* kPolicyNames[] = {"fifo", "greedy", "backfill"};
  const QueuePolicy kQueues[] = {QueuePolicy::kFifo, QueuePolicy::kGreedy, QueuePolicy::kBackfill};
  Ratios over_opt[3];
  int bound_below_opt = 0;
  int default_above_opt = 0;
  for (int instance = 0; instance < kInstances; ++instance) {
    // Two devices, equal or 10 and 20 GiB; 4 to 8 jobs; 15% 2-GPU gangs.
    const bool mixed = instance % 3 == 2;
    const std::vector<std::uint64_t> sizes = {10 * kGiB, (mixed ? 20 : 10) * kGiB};
    const int n = std::uniform_int_distribution<int>(4, 8)(rng);
    std::vector<TraceJob> jobs;
    for (int j = 0; j < n; ++j) {
      const bool gang = std::uniform_real_distribution<double>(0, 1)(rng) < 0.15;
      const std::uint64_t max_gib = gang ? 10 : (mixed ? 20 : 10);
      jobs.push_back(job("j" + std::to_string(j), std::uniform_int_distribution<int>(0, 8)(rng),
                         std::uniform_int_distribution<std::uint64_t>(1, max_gib)(rng),
                         std::uniform_int_distribution<int>(1, 10)(rng), gang ? 2 : 1));
    }
    std::stable_sort(jobs.begin(), jobs.end(), [](const TraceJob& a, const TraceJob& b) {
      return a.arrival_s < b.arrival_s;
    });
    const testing::ExactResult opt = exact_min_makespan(jobs, sizes);
    ASSERT_TRUE(schedule_is_feasible(jobs, sizes, opt.schedule)) << "instance " << instance;
    const double bound = makespan_lower_bound(jobs, sizes).value_s;
    ASSERT_LE(bound, opt.makespan_s) << "instance " << instance;
    lb_over_opt.add(bound / opt.makespan_s);
    if (bound < opt.makespan_s) ++bound_below_opt;
    for (int p = 0; p < 3; ++p) {
      StatusOr<SimReport> r =
          replay(jobs, sizes, 1.0, PlacementPolicy::kBestFit, kQueues[p], 1 << 30);
      ASSERT_TRUE(r.ok()) << r.status().to_string();
      // No schedule beats the optimum: a search that missed schedules would fail here.
      ASSERT_GE(r->makespan_s, opt.makespan_s) << kPolicyNames[p] << " on instance " << instance;
      ASSERT_LE(r->lower_bound_s, opt.makespan_s) << "instance " << instance;
      over_opt[p].add(r->makespan_s / opt.makespan_s);
      if (kQueues[p] == QueuePolicy::kBackfill && r->makespan_s > opt.makespan_s) {
        ++default_above_opt;
      }
    }
  }
  // The instances are not trivial: the bound is loose on some and the online default misses
  // the optimum on some.
  EXPECT_GT(bound_below_opt, 0);
  EXPECT_GT(default_above_opt, 0);
  std::printf("%d instances: lower bound / optimum mean %.3f, min %.3f (below the optimum on %d)\n",
              kInstances, lb_over_opt.mean(), lb_over_opt.least, bound_below_opt);
  for (int p = 0; p < 3; ++p) {
    std::printf("%-8s makespan / optimum: mean %.3f, worst %.3f\n", kPolicyNames[p],
                over_opt[p].mean(), over_opt[p].worst);
  }
}

}  // namespace
}  // namespace gpumgr::sim
