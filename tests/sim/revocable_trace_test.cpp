// Revocable jobs in traces (docs/simulate.md): the preemptible and resident columns, and a
// replay where a resident is unloaded and a preemptible job starts over for a job of higher
// priority, on a virtual clock; start times worked out by hand in the comments.
#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "gpumgr/units.h"
#include "sim/replay.h"
#include "sim/trace.h"

namespace gpumgr::sim {
namespace {

StatusOr<std::vector<TraceJob>> parse(const std::string& text) {
  std::istringstream in(text);
  return parse_trace(in);
}

const SimJob& find(const SimReport& report, const std::string& id) {
  for (const SimJob& j : report.timeline) {
    if (j.job_id == id) return j;
  }
  ADD_FAILURE() << "no job " << id;
  return report.timeline.front();
}

TEST(RevocableTrace, TheColumnsAreReadAndBadValuesNamed) {
  auto jobs = parse(
      "arrival_s,vram_mib,duration_s,priority,job_id,preemptible,resident\n"
      "0,1024,10,0,batch,1,\n"
      "0,1024,10,0,model,,llama\n"
      "0,1024,10,0,plain,0,\n");
  ASSERT_TRUE(jobs.ok()) << jobs.status().to_string();
  ASSERT_EQ(jobs->size(), 3u);
  EXPECT_TRUE((*jobs)[0].preemptible);
  EXPECT_EQ((*jobs)[0].resident, "");
  EXPECT_FALSE((*jobs)[1].preemptible);
  EXPECT_EQ((*jobs)[1].resident, "llama");
  EXPECT_FALSE((*jobs)[2].preemptible);

  const std::pair<const char*, const char*> bad[] = {
      {"arrival_s,vram_mib,duration_s,preemptible\n0,1,1,yes\n", "must be 0 or 1"},
      {"arrival_s,vram_mib,duration_s,preemptible\n0,1,1,2\n", "must be 0 or 1"},
      {"arrival_s,vram_mib,duration_s,resident\n0,1,1,\"a\x1b b\"\n", "control characters"},
      {"arrival_s,vram_mib,duration_s,preemptible,resident\n0,1,1,1,m\n", "not both"},
  };
  for (const auto& [text, words] : bad) {
    auto r = parse(text);
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_NE(r.status().message().find(words), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find("line 2"), std::string::npos) << r.status().message();
  }
}

// One device of 10 GiB (memory limit 1).
//   model t=0 6 GiB for 100 s, resident; batch t=0 4 GiB 20 s, preemptible: the device is full.
//   urgent t=5 6 GiB 10 s, priority 1: fits nowhere; the resident goes first and alone is
//     enough: unloaded at 5, urgent runs 5..15, batch runs on.
//   critical t=6 8 GiB 1 s, priority 2: batch's 4 GiB would not be enough (urgent, not
//     revocable, holds 6): nothing is revoked and it waits. At 15 urgent ends: 6 GiB free plus
//     batch's 4 is enough, so batch is preempted at 15 and critical runs 15..16; batch starts
//     over at 16 and ends at 36.
TEST(RevocableTrace, AResidentIsUnloadedAndAPreemptibleJobStartsOver) {
  auto jobs = parse(
      "arrival_s,vram_mib,duration_s,priority,job_id,preemptible,resident\n"
      "0,6144,100,0,model,,llama\n"
      "0,4096,20,0,batch,1,\n"
      "5,6144,10,1,urgent,,\n"
      "6,8192,1,2,critical,,\n");
  ASSERT_TRUE(jobs.ok()) << jobs.status().to_string();
  auto r = replay(*jobs, {10 * kGiB}, 1.0, PlacementPolicy::kBestFit, QueuePolicy::kBackfill, 8);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->residents_unloaded, 1u);
  EXPECT_EQ(r->preemptions, 1u);
  EXPECT_DOUBLE_EQ(find(*r, "model").start_s, 0);
  EXPECT_DOUBLE_EQ(find(*r, "model").end_s, 5);  // unloaded, not its 100 s
  EXPECT_DOUBLE_EQ(find(*r, "urgent").start_s, 5);
  EXPECT_DOUBLE_EQ(find(*r, "critical").start_s, 15);
  EXPECT_DOUBLE_EQ(find(*r, "batch").start_s, 16);
  EXPECT_DOUBLE_EQ(find(*r, "batch").end_s, 36);
  EXPECT_DOUBLE_EQ(r->makespan_s, 36);
  EXPECT_LE(r->lower_bound_s, r->makespan_s);
}

TEST(RevocableTrace, TracesWithoutRevocableJobsReplayAsBefore) {
  auto jobs = parse("arrival_s,vram_mib,duration_s,priority\n0,8192,10,0\n1,8192,5,5\n");
  ASSERT_TRUE(jobs.ok());
  auto r = replay(*jobs, {10 * kGiB}, 1.0, PlacementPolicy::kBestFit, QueuePolicy::kBackfill, 8);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->preemptions, 0u);
  EXPECT_EQ(r->residents_unloaded, 0u);
  EXPECT_DOUBLE_EQ(find(*r, "2").start_s, 10);  // a priority alone revokes nothing
}

}  // namespace
}  // namespace gpumgr::sim
