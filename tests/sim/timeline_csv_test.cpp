// The per-job timeline CSV of `gpumgr simulate --timeline`: exact rows for a replay small
// enough to schedule by hand, quoting, and a report that does not match its trace.
#include "sim/timeline_csv.h"

#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "gpumgr/units.h"
#include "sim/replay.h"
#include "sim/trace.h"

namespace gpumgr::sim {
namespace {

std::vector<TraceJob> parse(const std::string& csv) {
  std::istringstream in(csv);
  StatusOr<std::vector<TraceJob>> jobs = parse_trace(in);
  EXPECT_TRUE(jobs.ok()) << jobs.status().to_string();
  return jobs.ok() ? *jobs : std::vector<TraceJob>{};
}

TEST(TimelineCsv, FieldsNeedingQuotesAreQuotedWithTheirQuotesDoubled) {
  EXPECT_EQ(csv_field("plain-id_1"), "plain-id_1");
  EXPECT_EQ(csv_field(""), "");
  EXPECT_EQ(csv_field("a,b"), "\"a,b\"");
  EXPECT_EQ(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
}

// One device of 10 GiB at memory limit 0.8 (8 GiB): under FIFO `a` (6 GiB, 10 s, arriving at
// 0) runs 0-10; `b` (6 GiB, 2.5 s, arriving at 1) waits for it and runs 10-12.5; `c` (1 GiB,
// 0.25 s, at 2) fits beside `a` but FIFO starts nothing while `b` waits, so it starts with
// `b` at 10 (6 + 1 <= 8) and ends at 10.25. Greedy starts `c` at once (2-2.25).
TEST(TimelineCsv, RowsGiveEachJobsShapeAndTimesUnderEachPolicy) {
  const std::vector<TraceJob> jobs = parse(
      "arrival_s,vram_mib,duration_s,gpus,priority,job_id,kind,user\n"
      "0,6144,10,1,0,a,\"render,4k\",ann\n"
      "1,6144,2.5,1,0,b,,bob\n"
      "2,1024,0.25,1,0,c,,ann\n");
  ASSERT_EQ(jobs.size(), 3u);
  std::ostringstream out;
  write_timeline_header(out);
  for (const QueuePolicy queue : {QueuePolicy::kFifo, QueuePolicy::kGreedy}) {
    StatusOr<SimReport> r =
        replay(jobs, {10 * kGiB}, 0.8, PlacementPolicy::kBestFit, queue, 100, 2, true, false);
    ASSERT_TRUE(r.ok()) << r.status().to_string();
    ASSERT_TRUE(write_timeline_rows(out, jobs, *r));
  }
  EXPECT_EQ(out.str(),
            "policy,residency,job_id,user,kind,gpus,vram_mib,arrival_s,start_s,end_s,wait_s,"
            "devices,loaded_model\n"
            "fifo,,a,ann,\"render,4k\",1,6144,0,0,10,0,0,0\n"
            "fifo,,b,bob,,1,6144,1,10,12.5,9,0,0\n"
            "fifo,,c,ann,,1,1024,2,10,10.25,8,0,0\n"
            "greedy,,a,ann,\"render,4k\",1,6144,0,0,10,0,0,0\n"
            "greedy,,b,bob,,1,6144,1,10,12.5,9,0,0\n"
            "greedy,,c,ann,,1,1024,2,2,2.25,0,0,0\n");
}

TEST(TimelineCsv, AReportOfAnotherTraceWritesNothing) {
  const std::vector<TraceJob> jobs = parse("arrival_s,vram_mib,duration_s\n0,1024,1\n0,1024,1\n");
  StatusOr<SimReport> r =
      replay(jobs, {10 * kGiB}, 0.8, PlacementPolicy::kBestFit, QueuePolicy::kFifo, 100);
  ASSERT_TRUE(r.ok());
  const std::vector<TraceJob> other = parse("arrival_s,vram_mib,duration_s\n0,1024,1\n");
  std::ostringstream out;
  EXPECT_FALSE(write_timeline_rows(out, other, *r));
  std::vector<TraceJob> renamed = jobs;
  renamed[1].job_id = "someone-else";
  EXPECT_FALSE(write_timeline_rows(out, renamed, *r));
  EXPECT_EQ(out.str(), "");
}

}  // namespace
}  // namespace gpumgr::sim
