// Tests of the virtual-clock replay on traces small enough to schedule by hand; each comment
// gives the start times the scheduler's rules (docs/scheduling.md) imply.
#include "sim/replay.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "gpumgr/units.h"

namespace gpumgr::sim {
namespace {

TraceJob job(std::string id, double arrival, std::uint64_t gib, double duration, int gpus = 1,
             int priority = 0) {
  TraceJob j;
  j.job_id = std::move(id);
  j.arrival_s = arrival;
  j.vram_bytes = gib * kGiB;
  j.duration_s = duration;
  j.gpus = gpus;
  j.priority = priority;
  return j;
}

const SimJob& find(const SimReport& report, const std::string& id) {
  for (const SimJob& j : report.timeline) {
    if (j.job_id == id) return j;
  }
  ADD_FAILURE() << "no job " << id;
  return report.timeline.front();
}

// Two devices of 10 GiB (memory limit 1: capacity 10 GiB each).
//   A t=0 8 GiB 10 s -> device 0;  B t=0 8 GiB 20 s -> device 1 (2 GiB left on each).
//   C t=1 9 GiB 10 s: fits nowhere; becomes the head and reserves device 0 (equal shortfall,
//     lowest index first).
//   D t=2 2 GiB 5 s: fits on device 1 now.
// Backfill: D starts at 2 on the unreserved device 1 (ends 7); C starts at 10 when A leaves.
// FIFO: D waits behind C; at 10 C starts on device 0 and D on device 1 (ends 15).
const std::vector<TraceJob> kBackfillTrace = {job("A", 0, 8, 10), job("B", 0, 8, 20),
                                              job("C", 1, 9, 10), job("D", 2, 2, 5)};
const std::vector<std::uint64_t> kTwoDevices = {10 * kGiB, 10 * kGiB};

TEST(ReplayTest, BackfillStartsASmallJobBesideTheWaitingHead) {
  StatusOr<SimReport> r = replay(kBackfillTrace, kTwoDevices, 1.0, PlacementPolicy::kBestFit,
                                 QueuePolicy::kBackfill, 1 << 30);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->policy, "best-fit");
  EXPECT_DOUBLE_EQ(find(*r, "A").start_s, 0);
  EXPECT_EQ(find(*r, "A").devices, std::vector<int>{0});
  EXPECT_DOUBLE_EQ(find(*r, "B").start_s, 0);
  EXPECT_EQ(find(*r, "B").devices, std::vector<int>{1});
  EXPECT_DOUBLE_EQ(find(*r, "C").start_s, 10);
  EXPECT_EQ(find(*r, "C").devices, std::vector<int>{0});
  EXPECT_DOUBLE_EQ(find(*r, "D").start_s, 2);
  EXPECT_EQ(find(*r, "D").devices, std::vector<int>{1});
  EXPECT_DOUBLE_EQ(r->makespan_s, 20);
  // Waits 0, 0, 9, 0.
  EXPECT_DOUBLE_EQ(r->mean_wait_s, 9.0 / 4);
  EXPECT_DOUBLE_EQ(r->p50_wait_s, 0);
  EXPECT_DOUBLE_EQ(r->p99_wait_s, 9);
  EXPECT_DOUBLE_EQ(r->max_wait_s, 9);
  // Bound: (a) B ends at 20 at the earliest, so the schedule is optimal.
  EXPECT_DOUBLE_EQ(r->lower_bound_s, 20);
  EXPECT_EQ(r->lower_bound.binding(), "release");
  EXPECT_DOUBLE_EQ(r->makespan_over_lb, 1);
  // Leased GiB x s: 8*10 + 8*20 + 9*10 + 2*5 = 340, of 20 GiB x 20 s = 400.
  EXPECT_DOUBLE_EQ(r->utilization, 340.0 / 400);
}

TEST(ReplayTest, FifoKeepsTheSmallJobBehindTheHead) {
  StatusOr<SimReport> r = replay(kBackfillTrace, kTwoDevices, 1.0, PlacementPolicy::kBestFit,
                                 QueuePolicy::kFifo, 1 << 30);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->policy, "fifo");
  EXPECT_DOUBLE_EQ(find(*r, "C").start_s, 10);
  EXPECT_DOUBLE_EQ(find(*r, "D").start_s, 10);
  EXPECT_EQ(find(*r, "D").devices, std::vector<int>{1});
  EXPECT_DOUBLE_EQ(find(*r, "D").end_s, 15);
  EXPECT_DOUBLE_EQ(r->makespan_s, 20);
  // Waits 0, 0, 9, 8.
  EXPECT_DOUBLE_EQ(r->mean_wait_s, 17.0 / 4);
  EXPECT_DOUBLE_EQ(r->max_wait_s, 9);
}

TEST(ReplayTest, PlacementDecidesWhetherALargeJobFindsRoom) {
  // Two 10 GiB devices. A t=0 6 GiB 10 s -> device 0. B t=1 3 GiB 10 s: best-fit puts it on
  // device 0 (4 GiB left there), spread on device 1. C t=2 8 GiB 5 s: after best-fit device 1
  // is empty and C starts at 2 (makespan 11); after spread 4 and 7 GiB are left, so C waits
  // until A leaves device 0 at 10 and ends at 15.
  const std::vector<TraceJob> trace = {job("A", 0, 6, 10), job("B", 1, 3, 10), job("C", 2, 8, 5)};
  StatusOr<SimReport> best =
      replay(trace, kTwoDevices, 1.0, PlacementPolicy::kBestFit, QueuePolicy::kBackfill, 1 << 30);
  StatusOr<SimReport> spread =
      replay(trace, kTwoDevices, 1.0, PlacementPolicy::kSpread, QueuePolicy::kBackfill, 1 << 30);
  ASSERT_TRUE(best.ok() && spread.ok());
  EXPECT_EQ(find(*best, "B").devices, std::vector<int>{0});
  EXPECT_DOUBLE_EQ(find(*best, "C").start_s, 2);
  EXPECT_DOUBLE_EQ(best->makespan_s, 11);
  EXPECT_EQ(spread->policy, "spread");
  EXPECT_EQ(find(*spread, "B").devices, std::vector<int>{1});
  EXPECT_DOUBLE_EQ(find(*spread, "C").start_s, 10);
  EXPECT_EQ(find(*spread, "C").devices, std::vector<int>{0});
  EXPECT_DOUBLE_EQ(spread->makespan_s, 15);
}

TEST(ReplayTest, MemoryLimitSetsCapacityAndConcurrencyLimitSerialises) {
  // 10 GiB devices at limit 0.5 hold 5 GiB of leases: two 3 GiB jobs cannot share one.
  const std::vector<TraceJob> trace = {job("A", 0, 3, 10), job("B", 0, 3, 10)};
  StatusOr<SimReport> r =
      replay(trace, {10 * kGiB}, 0.5, PlacementPolicy::kBestFit, QueuePolicy::kBackfill, 1 << 30);
  ASSERT_TRUE(r.ok());
  EXPECT_DOUBLE_EQ(find(*r, "B").start_s, 10);
  EXPECT_DOUBLE_EQ(r->makespan_s, 20);
  // 3 GiB > half of 5 GiB: the exclusive term sees it, (10 + 10) / 1.
  EXPECT_DOUBLE_EQ(r->lower_bound.exclusive_s, 20);

  // At limit 1 they share the device, unless at most one job may be active.
  StatusOr<SimReport> shared =
      replay(trace, {10 * kGiB}, 1.0, PlacementPolicy::kBestFit, QueuePolicy::kBackfill, 1 << 30);
  StatusOr<SimReport> limited =
      replay(trace, {10 * kGiB}, 1.0, PlacementPolicy::kBestFit, QueuePolicy::kBackfill, 1);
  ASSERT_TRUE(shared.ok() && limited.ok());
  EXPECT_DOUBLE_EQ(shared->makespan_s, 10);
  EXPECT_DOUBLE_EQ(limited->makespan_s, 20);
}

TEST(ReplayTest, PriorityJumpsTheQueueAndMultiGpuJobsTakeDistinctDevices) {
  // One... two 10 GiB devices. A t=0 2-GPU 6 GiB 10 s takes both. B t=1 6 GiB 5 s (prio 0)
  // and C t=2 6 GiB 5 s (prio 1) wait; at 10 both fit (one per device) and start.
  // D t=3 2-GPU 6 GiB 1 s with priority 2 is the head from t=3: it starts at 10 first,
  // on both devices, and B and C follow at 11, in priority order, one per device.
  const std::vector<TraceJob> trace = {job("A", 0, 6, 10, 2), job("B", 1, 6, 5),
                                       job("C", 2, 6, 5, 1, 1), job("D", 3, 6, 1, 2, 2)};
  StatusOr<SimReport> r =
      replay(trace, kTwoDevices, 1.0, PlacementPolicy::kBestFit, QueuePolicy::kFifo, 1 << 30);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(find(*r, "A").devices, (std::vector<int>{0, 1}));
  EXPECT_DOUBLE_EQ(find(*r, "D").start_s, 10);
  EXPECT_EQ(find(*r, "D").devices, (std::vector<int>{0, 1}));
  EXPECT_DOUBLE_EQ(find(*r, "C").start_s, 11);
  EXPECT_DOUBLE_EQ(find(*r, "B").start_s, 11);
  EXPECT_DOUBLE_EQ(r->makespan_s, 16);
  // Area: (6*2*10 + 6*5 + 6*5 + 6*2*1) / 20 = 9.6; exclusive: 6 > 5 GiB, so every job is
  // large: (20 + 5 + 5 + 2) / 2 = 16 at t=0. The replay is optimal.
  EXPECT_DOUBLE_EQ(r->lower_bound_s, 16);
  EXPECT_EQ(r->lower_bound.binding(), "exclusive");
}

TEST(ReplayTest, ZeroDurationAndEmptyTraces) {
  StatusOr<SimReport> r = replay({job("A", 0, 1, 0), job("B", 5, 1, 0)}, kTwoDevices, 0.8,
                                 PlacementPolicy::kFirstFit, QueuePolicy::kBackfill, 1 << 30);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->policy, "first-fit");
  EXPECT_DOUBLE_EQ(r->makespan_s, 5);
  EXPECT_DOUBLE_EQ(r->utilization, 0);

  StatusOr<SimReport> empty =
      replay({}, kTwoDevices, 0.8, PlacementPolicy::kBestFit, QueuePolicy::kBackfill, 1 << 30);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->jobs, 0u);
  EXPECT_DOUBLE_EQ(empty->makespan_s, 0);
  EXPECT_DOUBLE_EQ(empty->makespan_over_lb, 1);
}

// kBackfillTrace with D holding 15 s. Greedy puts D on device 0 (both devices have 2 GiB
// left: the lowest index), so when A leaves at 10, device 0 has 8 GiB and C (9) waits until
// D ends at 17. Backfill reserves device 0 for C at 1 (no hold seen yet: at once) and D,
// which does not fit in the 1 GiB that C will never need there, starts on device 1.
TEST(ReplayTest, GreedyLetsALaterJobDelayTheHead) {
  std::vector<TraceJob> trace = kBackfillTrace;
  trace[3].duration_s = 15;
  StatusOr<SimReport> greedy =
      replay(trace, kTwoDevices, 1.0, PlacementPolicy::kBestFit, QueuePolicy::kGreedy, 1 << 30);
  ASSERT_TRUE(greedy.ok()) << greedy.status().to_string();
  EXPECT_EQ(greedy->policy, "greedy");
  EXPECT_EQ(find(*greedy, "D").devices, std::vector<int>{0});
  EXPECT_DOUBLE_EQ(find(*greedy, "C").start_s, 17);
  EXPECT_DOUBLE_EQ(greedy->max_wait_s, 16);
  StatusOr<SimReport> backfill =
      replay(trace, kTwoDevices, 1.0, PlacementPolicy::kBestFit, QueuePolicy::kBackfill, 1 << 30);
  ASSERT_TRUE(backfill.ok()) << backfill.status().to_string();
  EXPECT_EQ(find(*backfill, "D").devices, std::vector<int>{1});
  EXPECT_DOUBLE_EQ(find(*backfill, "C").start_s, 10);
  EXPECT_EQ(policy_name(PlacementPolicy::kSpread, QueuePolicy::kGreedy), "greedy/spread");
}

TEST(ReplayTest, ErrorsNameTheJob) {
  // 22 GiB on 24 GiB devices at the default limit 0.8 (19.2 GiB of capacity) never fits.
  StatusOr<SimReport> r =
      replay({job("small", 0, 4, 1), job("tex-9", 1, 22, 1)}, {24 * kGiB, 24 * kGiB}, 0.8,
             PlacementPolicy::kBestFit, QueuePolicy::kBackfill, 1 << 30);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kNeverFits);
  EXPECT_NE(r.status().message().find("job 'tex-9': "), std::string::npos) << r.status().message();

  EXPECT_EQ(
      replay({}, {}, 0.8, PlacementPolicy::kBestFit, QueuePolicy::kBackfill, 1).status().code(),
      ErrorCode::kInvalidArgument);
  EXPECT_EQ(replay({}, kTwoDevices, 1.5, PlacementPolicy::kBestFit, QueuePolicy::kBackfill, 1)
                .status()
                .code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(replay({}, kTwoDevices, 0.8, PlacementPolicy::kBestFit, QueuePolicy::kBackfill, 0)
                .status()
                .code(),
            ErrorCode::kInvalidArgument);
  EXPECT_EQ(replay({}, kTwoDevices, 0.8, PlacementPolicy::kBestFit, QueuePolicy::kBackfill, 1, -1)
                .status()
                .code(),
            ErrorCode::kInvalidArgument);
  // Three GPUs on a two-device pool.
  EXPECT_EQ(replay({job("wide", 0, 1, 1, 3)}, kTwoDevices, 0.8, PlacementPolicy::kBestFit,
                   QueuePolicy::kBackfill, 1 << 30)
                .status()
                .code(),
            ErrorCode::kInvalidArgument);
}

TEST(ReplayTest, FractionalTimesAreKeptToTheNanosecond) {
  // One 10 GiB device; A 0.1 s + B waiting 0.2 s: B starts at 0.1 and ends at 0.3.
  StatusOr<SimReport> r = replay({job("A", 0, 6, 0.1), job("B", 0, 6, 0.2)}, {10 * kGiB}, 1.0,
                                 PlacementPolicy::kBestFit, QueuePolicy::kBackfill, 1 << 30);
  ASSERT_TRUE(r.ok());
  EXPECT_NEAR(find(*r, "B").start_s, 0.1, 1e-12);
  EXPECT_NEAR(r->makespan_s, 0.3, 1e-12);
  EXPECT_LE(r->lower_bound_s, r->makespan_s);
}

// One device of 10 GiB; three 10 GiB jobs of "heavy" at t=0 and one of "light" at t=1, each
// holding 10 s, so one runs at a time.
//   Fair share: at 10 heavy has used 100 GiB-s and light nothing: L starts at 10, then H2 at
//     20, H3 at 30. Heavy waits 0, 20, 30 (slowdowns 1, 3, 4: mean 8/3); light waits 9 (1.9).
//   Arrival order: H2 at 10, H3 at 20, L at 30. Heavy waits 0, 10, 20 (slowdowns 1, 2, 3:
//     mean 2); light waits 29 (3.9).
// Jain's index of the mean slowdowns: (a + b)^2 / (2 (a^2 + b^2)).
TEST(ReplayTest, PerUserWaitsSlowdownsAndJainsIndexWithAndWithoutFairShare) {
  auto user_job = [](std::string id, double arrival, std::string user) {
    TraceJob j = job(std::move(id), arrival, 10, 10);
    j.user = std::move(user);
    return j;
  };
  const std::vector<TraceJob> trace = {user_job("H1", 0, "heavy"), user_job("H2", 0, "heavy"),
                                       user_job("H3", 0, "heavy"), user_job("L", 1, "light")};
  const std::vector<std::uint64_t> one = {10 * kGiB};
  auto jain = [](double a, double b) { return (a + b) * (a + b) / (2 * (a * a + b * b)); };
  for (const bool fair : {true, false}) {
    StatusOr<SimReport> r = replay(trace, one, 1.0, PlacementPolicy::kBestFit,
                                   QueuePolicy::kBackfill, 1 << 30, 2, true, fair);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    ASSERT_EQ(r->users.size(), 2u);
    const SimReport::User& heavy = r->users[0];
    const SimReport::User& light = r->users[1];
    EXPECT_EQ(heavy.name, "heavy");
    EXPECT_EQ(light.name, "light");
    EXPECT_EQ(heavy.jobs, 3u);
    EXPECT_EQ(light.jobs, 1u);
    EXPECT_DOUBLE_EQ(find(*r, "L").start_s, fair ? 10 : 30) << "fair share " << fair;
    EXPECT_NEAR(heavy.mean_wait_s, fair ? 50.0 / 3 : 10, 1e-9);
    EXPECT_DOUBLE_EQ(heavy.max_wait_s, fair ? 30 : 20);
    EXPECT_DOUBLE_EQ(light.mean_wait_s, fair ? 9 : 29);
    EXPECT_NEAR(heavy.mean_slowdown, fair ? 8.0 / 3 : 2, 1e-9);
    EXPECT_NEAR(light.mean_slowdown, fair ? 1.9 : 3.9, 1e-9);
    EXPECT_NEAR(r->jain_fairness, fair ? jain(8.0 / 3, 1.9) : jain(2, 3.9), 1e-9);
    EXPECT_DOUBLE_EQ(r->makespan_s, 40);
  }
  // Without a user column: one anonymous user, Jain's index 1.
  StatusOr<SimReport> anon = replay(kBackfillTrace, kTwoDevices, 1.0, PlacementPolicy::kBestFit,
                                    QueuePolicy::kBackfill, 1 << 30);
  ASSERT_TRUE(anon.ok());
  ASSERT_EQ(anon->users.size(), 1u);
  EXPECT_EQ(anon->users[0].name, "");
  EXPECT_EQ(anon->users[0].jobs, 4u);
  EXPECT_DOUBLE_EQ(anon->jain_fairness, 1);
}

}  // namespace
}  // namespace gpumgr::sim
