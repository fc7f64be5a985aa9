// The shipped traces (bench/traces) replayed with every policy on the pools they are meant
// for, checking what must hold whatever the policy: every job fits, no device is ever
// leased beyond its capacity, nobody starts before arriving, FIFO keeps arrival order within
// a priority, and the makespan is never below the lower bound.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "core/accounting.h"
#include "gpumgr/units.h"
#include "sim/replay.h"
#include "sim/trace.h"

namespace gpumgr::sim {
namespace {

struct Case {
  const char* file;
  std::size_t jobs;
  int devices;
  std::uint64_t device_bytes;
};

void check_trace(const Case& c) {
  StatusOr<std::vector<TraceJob>> jobs =
      load_trace(std::string(GPUMGR_SOURCE_DIR) + "/bench/traces/" + c.file);
  ASSERT_TRUE(jobs.ok()) << jobs.status().to_string();
  ASSERT_EQ(jobs->size(), c.jobs);
  const std::vector<std::uint64_t> sizes(static_cast<std::size_t>(c.devices), c.device_bytes);
  const std::uint64_t capacity = core::capacity_bytes(c.device_bytes, 0.8);

  const std::pair<PlacementPolicy, QueuePolicy> policies[] = {
      {PlacementPolicy::kBestFit, QueuePolicy::kFifo},
      {PlacementPolicy::kBestFit, QueuePolicy::kBackfill},
      {PlacementPolicy::kSpread, QueuePolicy::kBackfill},
      {PlacementPolicy::kFirstFit, QueuePolicy::kBackfill}};
  for (const auto& [placement, queue] : policies) {
    StatusOr<SimReport> r = replay(*jobs, sizes, 0.8, placement, queue, 1 << 30);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    SCOPED_TRACE(r->policy);
    EXPECT_GE(r->makespan_s, r->lower_bound_s);
    EXPECT_GT(r->utilization, 0.5);
    EXPECT_LE(r->utilization, 1.0);

    // Lease events per device: +bytes at start, -bytes at end; ends first at equal times.
    std::vector<std::multimap<std::pair<double, int>, std::uint64_t>> events(sizes.size());
    for (std::size_t i = 0; i < jobs->size(); ++i) {
      const SimJob& s = r->timeline[i];
      const TraceJob& j = (*jobs)[i];
      EXPECT_GE(s.start_s, s.arrival_s) << j.job_id;
      ASSERT_EQ(s.devices.size(), static_cast<std::size_t>(j.gpus)) << j.job_id;
      for (int d : s.devices) {
        events[static_cast<std::size_t>(d)].insert({{s.start_s, 1}, j.vram_bytes});
        events[static_cast<std::size_t>(d)].insert({{s.end_s, 0}, j.vram_bytes});
      }
    }
    for (const auto& device : events) {
      std::uint64_t leased = 0;
      for (const auto& [key, bytes] : device) {
        leased = key.second == 1 ? leased + bytes : leased - bytes;
        ASSERT_LE(leased, capacity);
      }
    }

    if (queue == QueuePolicy::kFifo) {
      // Within a priority, no job starts before one that arrived earlier.
      std::vector<std::size_t> order(jobs->size());
      for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
      std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        const TraceJob& x = (*jobs)[a];
        const TraceJob& y = (*jobs)[b];
        return x.priority != y.priority ? x.priority > y.priority : x.arrival_s < y.arrival_s;
      });
      for (std::size_t k = 1; k < order.size(); ++k) {
        const TraceJob& prev = (*jobs)[order[k - 1]];
        const TraceJob& cur = (*jobs)[order[k]];
        if (prev.priority != cur.priority) continue;
        EXPECT_LE(r->timeline[order[k - 1]].start_s, r->timeline[order[k]].start_s)
            << prev.job_id << " then " << cur.job_id;
      }
    }
  }
}

TEST(ShippedTracesTest, StudioOnFourFortyGiBDevices) {
  check_trace({"studio.csv", 2000, 4, 40 * kGiB});
}

TEST(ShippedTracesTest, AlibabaOpenbOnTenThirtyTwoGiBDevices) {
  check_trace({"alibaba_openb.csv", 1335, 10, 32 * kGiB});
}

}  // namespace
}  // namespace gpumgr::sim
