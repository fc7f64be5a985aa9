// Tests of the makespan lower bound on cases whose optimum is worked out by hand in each
// comment. Sizes are in abstract bytes (M = 1000) so that the arithmetic stays exact.
#include "sim/lower_bound.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace gpumgr::sim {
namespace {

constexpr std::uint64_t M = 1000;

TraceJob job(double arrival, std::uint64_t bytes, double duration, int gpus = 1) {
  static int next = 0;
  TraceJob j;
  j.job_id = std::to_string(++next);
  j.arrival_s = arrival;
  j.vram_bytes = bytes;
  j.duration_s = duration;
  j.gpus = gpus;
  return j;
}

TEST(LowerBoundTest, TwoJobsLargerThanHalfADeviceRunOneAfterTheOther) {
  // K=1. Two 0.6M jobs of 10 s at t=0 cannot share the device: the optimum is 20 s.
  // (a) 10, (b) 0 + 1.2M*10/M = 12, (c) 0 + 2*10/1 = 20.
  const LowerBound lb = makespan_lower_bound({job(0, 600, 10), job(0, 600, 10)}, 1, M);
  EXPECT_DOUBLE_EQ(lb.release_s, 10);
  EXPECT_DOUBLE_EQ(lb.area_s, 12);
  EXPECT_DOUBLE_EQ(lb.exclusive_s, 20);
  EXPECT_DOUBLE_EQ(lb.value_s, 20);
  EXPECT_EQ(lb.binding(), "exclusive");
}

TEST(LowerBoundTest, SmallJobsThatAllFitTogetherAreBoundByTheirDuration) {
  // K=1. Three 0.25M jobs of 10 s at t=0 run side by side: the optimum is 10 s.
  // (a) 10, (b) 3*0.25M*10/M = 7.5, (c) no job is larger than M/2: 0.
  const LowerBound lb =
      makespan_lower_bound({job(0, 250, 10), job(0, 250, 10), job(0, 250, 10)}, 1, M);
  EXPECT_DOUBLE_EQ(lb.release_s, 10);
  EXPECT_DOUBLE_EQ(lb.area_s, 7.5);
  EXPECT_DOUBLE_EQ(lb.exclusive_s, 0);
  EXPECT_DOUBLE_EQ(lb.value_s, 10);
  EXPECT_EQ(lb.binding(), "release");
}

TEST(LowerBoundTest, AreaBindsAtALateArrival) {
  // K=1. A 0.5M job of 2 s at t=0, then four 0.5M jobs of 10 s at t=10. Optimum: the first
  // is done at 2; two of the four run 10..20 and two 20..30: 30 s.
  // (a) 20. (b) at t=0: (0.5*2 + 4*0.5*10)/1 = 21; at t=10: 10 + 20 = 30. (c) 0.5M is not
  // larger than M/2: 0. A bound that only looked at t=0 would give 21.
  const LowerBound lb = makespan_lower_bound(
      {job(0, 500, 2), job(10, 500, 10), job(10, 500, 10), job(10, 500, 10), job(10, 500, 10)}, 1,
      M);
  EXPECT_DOUBLE_EQ(lb.release_s, 20);
  EXPECT_DOUBLE_EQ(lb.area_s, 30);
  EXPECT_DOUBLE_EQ(lb.exclusive_s, 0);
  EXPECT_DOUBLE_EQ(lb.value_s, 30);
  EXPECT_EQ(lb.binding(), "area");
}

TEST(LowerBoundTest, MultiGpuJobsCountOncePerDevice) {
  // K=2. Three 2-GPU jobs of 0.5M per device, 10 s, at t=0. Each device holds two halves, so
  // two jobs run 0..10 and the third 10..20: the optimum is 20 s.
  // (a) 10, (b) 3 * 0.5M * 2 * 10 / 2M = 15 (ignoring gpus would give 7.5), (c) 0.
  const LowerBound lb =
      makespan_lower_bound({job(0, 500, 10, 2), job(0, 500, 10, 2), job(0, 500, 10, 2)}, 2, M);
  EXPECT_DOUBLE_EQ(lb.area_s, 15);
  EXPECT_DOUBLE_EQ(lb.exclusive_s, 0);
  EXPECT_DOUBLE_EQ(lb.value_s, 15);
  EXPECT_LE(lb.value_s, 20);  // never above the optimum
}

TEST(LowerBoundTest, LargeMultiGpuJobTakesEveryDeviceSlot) {
  // K=2. A 2-GPU 0.6M job and a 1-GPU 0.6M job, both 10 s at t=0. Neither can share a device
  // with the other, so they run one after the other: the optimum is 20 s.
  // (a) 10, (b) (0.6*2*10 + 0.6*10)/2 = 9, (c) (2*10 + 10)/2 = 15 (gpus ignored: 10).
  const LowerBound lb = makespan_lower_bound({job(0, 600, 10, 2), job(0, 600, 10)}, 2, M);
  EXPECT_DOUBLE_EQ(lb.area_s, 9);
  EXPECT_DOUBLE_EQ(lb.exclusive_s, 15);
  EXPECT_DOUBLE_EQ(lb.value_s, 15);
  EXPECT_LE(lb.value_s, 20);
}

TEST(LowerBoundTest, ExclusiveTermCountsLateLargeJobsOnly) {
  // K=1. A 0.6M job of 30 s at t=0 and two 0.6M jobs of 10 s at t=25. Optimum: the first
  // ends at 30, then 30..40 and 40..50: 50 s.
  // (c) at t=0: 50/1 = 50; at t=25: 25 + 20 = 45. (a) 35. (b) at 0: 0.6*50 = 30; at 25: 25 + 0.6*20
  // = 37.
  const LowerBound lb =
      makespan_lower_bound({job(0, 600, 30), job(25, 600, 10), job(25, 600, 10)}, 1, M);
  EXPECT_DOUBLE_EQ(lb.release_s, 35);
  EXPECT_DOUBLE_EQ(lb.area_s, 37);
  EXPECT_DOUBLE_EQ(lb.exclusive_s, 50);
  EXPECT_DOUBLE_EQ(lb.value_s, 50);
}

TEST(LowerBoundTest, MixedPoolUsesEachCapacityAsAThreshold) {
  // Devices of capacity 40 and 80; four 50-byte jobs of 10 s at t=0. None fits the 40 device
  // and the 80 device holds one at a time (2*50 > 80): the optimum is 40 s.
  // Threshold 80: jobs > 40 are large; the 40 device holds floor(79/80) = 0 of them, the 80
  // device floor(159/80) = 1: 40 s. Threshold 40: jobs > 20; 1 + 3 = 4 slots: 10 s.
  // (b) 4*50*10/120 = 16.67. Using only the smallest capacity would give 16.67.
  const LowerBound lb =
      makespan_lower_bound({job(0, 50, 10), job(0, 50, 10), job(0, 50, 10), job(0, 50, 10)},
                           std::vector<std::uint64_t>{40, 80});
  EXPECT_NEAR(lb.area_s, 200.0 * 10 / 120, 1e-9);
  EXPECT_DOUBLE_EQ(lb.exclusive_s, 40);
  EXPECT_DOUBLE_EQ(lb.value_s, 40);
}

TEST(LowerBoundTest, IdenticalPoolOverloadsAgree) {
  const std::vector<TraceJob> jobs = {job(0, 700, 5), job(1, 300, 8), job(2, 900, 3, 2)};
  const LowerBound a = makespan_lower_bound(jobs, 3, M);
  const LowerBound b = makespan_lower_bound(jobs, std::vector<std::uint64_t>{M, M, M});
  EXPECT_DOUBLE_EQ(a.value_s, b.value_s);
  EXPECT_DOUBLE_EQ(a.exclusive_s, b.exclusive_s);
  // (c) on 3 slots: at t=0, (5 + 2*3)/3 = 3.67; at t=2, 2 + 6/3 = 4. (a) = 1 + 8 = 9.
  EXPECT_DOUBLE_EQ(a.exclusive_s, 4);
  EXPECT_DOUBLE_EQ(a.value_s, 9);
}

TEST(LowerBoundTest, EmptyTraceIsZero) {
  const LowerBound lb = makespan_lower_bound({}, 4, M);
  EXPECT_DOUBLE_EQ(lb.value_s, 0);
}

}  // namespace
}  // namespace gpumgr::sim
