// Tests of the trace parser: the format of docs/simulate.md and its error messages.
#include "sim/trace.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "gpumgr/units.h"

namespace gpumgr::sim {
namespace {

StatusOr<std::vector<TraceJob>> parse(const std::string& text) {
  std::istringstream in(text);
  return parse_trace(in);
}

std::string error_of(const std::string& text) {
  StatusOr<std::vector<TraceJob>> jobs = parse(text);
  EXPECT_FALSE(jobs.ok()) << text;
  if (jobs.ok()) return "";
  EXPECT_EQ(jobs.status().code(), ErrorCode::kInvalidArgument);
  return jobs.status().message();
}

TEST(TraceTest, ParsesAllColumns) {
  StatusOr<std::vector<TraceJob>> jobs = parse(
      "arrival_s,vram_mib,duration_s,gpus,priority,job_id\n"
      "0,6144,12.5,1,0,img-1\n"
      "1.25,20480,90,2,1,tex-2\n");
  ASSERT_TRUE(jobs.ok()) << jobs.status().to_string();
  ASSERT_EQ(jobs->size(), 2u);
  const TraceJob& a = (*jobs)[0];
  EXPECT_EQ(a.job_id, "img-1");
  EXPECT_DOUBLE_EQ(a.arrival_s, 0);
  EXPECT_EQ(a.vram_bytes, 6 * kGiB);
  EXPECT_DOUBLE_EQ(a.duration_s, 12.5);
  EXPECT_EQ(a.gpus, 1);
  EXPECT_EQ(a.priority, 0);
  const TraceJob& b = (*jobs)[1];
  EXPECT_EQ(b.job_id, "tex-2");
  EXPECT_DOUBLE_EQ(b.arrival_s, 1.25);
  EXPECT_EQ(b.vram_bytes, 20 * kGiB);
  EXPECT_DOUBLE_EQ(b.duration_s, 90);
  EXPECT_EQ(b.gpus, 2);
  EXPECT_EQ(b.priority, 1);
}

TEST(TraceTest, ColumnsInAnyOrderUnknownIgnoredDefaultsApplied) {
  // No gpus/priority/job_id columns; an unknown column between known ones; CRLF line ends;
  // a blank line, which does not count as a row for the default job id.
  StatusOr<std::vector<TraceJob>> jobs = parse(
      "duration_s,note,vram_mib,arrival_s\r\n"
      "10,\"first, quoted\",0.5,3\r\n"
      "\r\n"
      "20,x,1024,4\r\n");
  ASSERT_TRUE(jobs.ok()) << jobs.status().to_string();
  ASSERT_EQ(jobs->size(), 2u);
  EXPECT_EQ((*jobs)[0].job_id, "1");
  EXPECT_EQ((*jobs)[0].vram_bytes, kMiB / 2);  // fractional MiB are kept, in bytes
  EXPECT_DOUBLE_EQ((*jobs)[0].arrival_s, 3);
  EXPECT_DOUBLE_EQ((*jobs)[0].duration_s, 10);
  EXPECT_EQ((*jobs)[0].gpus, 1);
  EXPECT_EQ((*jobs)[0].priority, 0);
  EXPECT_EQ((*jobs)[1].job_id, "2");
  EXPECT_EQ((*jobs)[1].vram_bytes, kGiB);
}

TEST(TraceTest, EmptyOptionalCellsTakeDefaultsAndNegativePriorityIsKept) {
  StatusOr<std::vector<TraceJob>> jobs = parse(
      "arrival_s,vram_mib,duration_s,gpus,priority,job_id\n"
      "0,100,1,,,\n"
      "0,100,1,3,-2,b\n");
  ASSERT_TRUE(jobs.ok()) << jobs.status().to_string();
  EXPECT_EQ((*jobs)[0].gpus, 1);
  EXPECT_EQ((*jobs)[0].priority, 0);
  EXPECT_EQ((*jobs)[0].job_id, "1");
  EXPECT_EQ((*jobs)[1].gpus, 3);
  EXPECT_EQ((*jobs)[1].priority, -2);
}

TEST(TraceTest, AKindColumnIsKeptAndAnEmptyCellIsNoKind) {
  StatusOr<std::vector<TraceJob>> jobs = parse(
      "arrival_s,vram_mib,duration_s,kind\n"
      "0,100,1,render\n"
      "1,100,1,\n");
  ASSERT_TRUE(jobs.ok()) << jobs.status().to_string();
  ASSERT_EQ(jobs->size(), 2u);
  EXPECT_EQ((*jobs)[0].kind, "render");
  EXPECT_EQ((*jobs)[1].kind, "");
  // A kind is checked as the scheduler checks it; the message does not repeat the bytes.
  const std::string bad = error_of("arrival_s,vram_mib,duration_s,kind\n0,100,1,a\x1b[2Jb\n");
  EXPECT_EQ(bad, "line 2: kind: job kind must not contain control characters");
  EXPECT_EQ(error_of("arrival_s,vram_mib,duration_s,kind\n0,100,1," + std::string(257, 'k') + "\n"),
            "line 2: kind: job kind is 257 characters long; the limit is 256");
}

TEST(TraceTest, AUserColumnIsKeptAndCheckedAndAnEmptyCellIsTheAnonymousUser) {
  StatusOr<std::vector<TraceJob>> jobs = parse(
      "user,arrival_s,vram_mib,duration_s\n"
      "alice,0,100,1\n"
      ",1,100,1\n");
  ASSERT_TRUE(jobs.ok()) << jobs.status().to_string();
  ASSERT_EQ(jobs->size(), 2u);
  EXPECT_EQ((*jobs)[0].user, "alice");
  EXPECT_EQ((*jobs)[1].user, "");
  EXPECT_EQ(error_of("arrival_s,vram_mib,duration_s,user\n0,100,1,a\x1b[2Jb\n"),
            "line 2: user: user must not contain control characters");
  EXPECT_EQ(error_of("arrival_s,vram_mib,duration_s,user\n0,100,1," + std::string(257, 'u') + "\n"),
            "line 2: user: user is 257 characters long; the limit is 256");
}

TEST(TraceTest, ModelColumnsAreReadAndAnEmptyModelIsNone) {
  StatusOr<std::vector<TraceJob>> jobs = parse(
      "arrival_s,vram_mib,duration_s,model,model_vram_mib,load_s\n"
      "0,2048,5,sdxl,7168,12.5\n"
      "1,100,1,,,\n"
      "2,1024,3,sdxl,7168,12.5\n");
  ASSERT_TRUE(jobs.ok()) << jobs.status().to_string();
  ASSERT_EQ(jobs->size(), 3u);
  EXPECT_EQ((*jobs)[0].model, "sdxl");
  EXPECT_EQ((*jobs)[0].vram_bytes, 2 * kGiB);  // the working memory alone
  EXPECT_EQ((*jobs)[0].model_bytes, 7 * kGiB);
  EXPECT_DOUBLE_EQ((*jobs)[0].load_s, 12.5);
  EXPECT_EQ((*jobs)[1].model, "");
  EXPECT_EQ((*jobs)[1].model_bytes, 0u);
  EXPECT_DOUBLE_EQ((*jobs)[1].load_s, 0);
  EXPECT_EQ((*jobs)[2].model_bytes, 7 * kGiB);
}

TEST(TraceTest, BadModelsAreNamedWithTheirLine) {
  const std::string header = "arrival_s,vram_mib,duration_s,model,model_vram_mib,load_s\n";
  const std::pair<std::string, std::string> bad[] = {
      {header + "0,1,1,\"a\x1b[2Jb\",1,1\n",
       "line 2: model: model name must not contain control characters"},
      {header + "0,1,1," + std::string(241, 'm') + ",1,1\n",
       "line 2: model: model name is 241 characters long; the limit is 240"},
      {header + "0,1,1,m,-1,1\n", "line 2: model_vram_mib: '-1' is negative"},
      {header + "0,1,1,m,big,1\n", "line 2: model_vram_mib: 'big' is not a number"},
      {header + "0,1,1,m,0,1\n", "line 2: model_vram_mib: '0' must be positive"},
      {header + "0,1,1,m,1e300,1\n", "line 2: model_vram_mib: '1e300' is too large"},
      {header + "0,1,1,m,1,-2\n", "line 2: load_s: '-2' is negative"},
      {header + "0,1,1,m,1,nan\n", "line 2: load_s: 'nan' is not a finite number"},
      {header + "0,1,1,,,5\n",
       "line 2: load_s: a job without a model (model column) has no load_s"},
      {header + "0,1,1,,64,\n",
       "line 2: model_vram_mib: a job without a model (model column) has no model_vram_mib"},
      {header + "0,1,1,m,,1\n",
       "line 2: model_vram_mib: a job on model 'm' needs its "
       "model_vram_mib"},
      {header + "0,1,1,m,1,\n", "line 2: load_s: a job on model 'm' needs its load_s"},
      {header + "0,1,1,m,7168,1\n0,1,1,n,1,1\n0,1,1,m,8000,1\n",
       "line 4: model_vram_mib: '8000' differs from the 7168 that line 2 gives model 'm'"},
      {header + "0,1,1,m,7168,12\n0,1,1,m,7168,12.5\n",
       "line 3: load_s: '12.5' differs from the 12 that line 2 gives model 'm'"},
      {"arrival_s,vram_mib,duration_s,model,model_vram_mib,load_s,preemptible\n0,1,1,m,1,1,1\n",
       "line 2: a job on a model is neither preemptible nor resident: the replay keeps its "
       "model resident itself"},
      {"arrival_s,vram_mib,duration_s,model,model_vram_mib,load_s,resident\n0,1,1,m,1,1,r\n",
       "line 2: a job on a model is neither preemptible nor resident: the replay keeps its "
       "model resident itself"},
      {"arrival_s,vram_mib,duration_s,model,model_vram_mib,load_s,gpus\n0,1,1,m,1,1,2\n",
       "line 2: a job on a model takes one GPU, not 2"},
  };
  for (const auto& [text, message] : bad) EXPECT_EQ(error_of(text), message) << text;
}

TEST(TraceTest, HeaderOnlyIsAnEmptyTrace) {
  StatusOr<std::vector<TraceJob>> jobs = parse("arrival_s,vram_mib,duration_s\n");
  ASSERT_TRUE(jobs.ok());
  EXPECT_TRUE(jobs->empty());
}

TEST(TraceTest, ErrorsNameLineAndColumn) {
  const std::string header = "arrival_s,vram_mib,duration_s,gpus,priority,job_id\n";
  EXPECT_EQ(error_of(header + "0,100,1,1,0,a\n0,abc,1,1,0,b\n"),
            "line 3: vram_mib: 'abc' is not a number");
  EXPECT_EQ(error_of(header + "-1,100,1,1,0,a\n"), "line 2: arrival_s: '-1' is negative");
  EXPECT_EQ(error_of(header + "0,100,-0.5,1,0,a\n"), "line 2: duration_s: '-0.5' is negative");
  EXPECT_EQ(error_of(header + "nan,100,1,1,0,a\n"),
            "line 2: arrival_s: 'nan' is not a finite number");
  EXPECT_EQ(error_of(header + "0,inf,1,1,0,a\n"), "line 2: vram_mib: 'inf' is not a finite number");
  EXPECT_EQ(error_of(header + "0,0,1,1,0,a\n"), "line 2: vram_mib: '0' must be positive");
  EXPECT_EQ(error_of(header + "0,100,1,0,0,a\n"), "line 2: gpus: '0' must be at least 1");
  EXPECT_EQ(error_of(header + "0,100,1,1.5,0,a\n"), "line 2: gpus: '1.5' is not an integer");
  EXPECT_EQ(error_of(header + "0,100,1,1,high,a\n"), "line 2: priority: 'high' is not an integer");
  EXPECT_EQ(error_of(header + "0,100 MiB,1,1,0,a\n"),
            "line 2: vram_mib: '100 MiB' is not a number");
  EXPECT_EQ(error_of(header + "0,,1,1,0,a\n"), "line 2: vram_mib: '' is not a number");
}

TEST(TraceTest, DuplicateJobIdsNameBothLines) {
  EXPECT_EQ(error_of("arrival_s,vram_mib,duration_s,job_id\n0,1,1,a\n0,1,1,b\n0,1,1,a\n"),
            "line 4: job_id: 'a' duplicates the job of line 2");
  // An explicit id may clash with the row-number default of another row.
  EXPECT_EQ(error_of("arrival_s,vram_mib,duration_s,job_id\n0,1,1,2\n0,1,1,\n"),
            "line 3: job_id: '2' duplicates the job of line 2");
}

TEST(TraceTest, HeaderProblems) {
  EXPECT_EQ(error_of("arrival_s,duration_s\n0,1\n"),
            "line 1: missing required column vram_mib (a trace needs "
            "arrival_s,vram_mib,duration_s)");
  EXPECT_EQ(error_of("arrival_s,vram_mib,duration_s,vram_mib\n"),
            "line 1: column vram_mib appears twice in the header");
  EXPECT_EQ(error_of(""), "empty trace: no header line (need arrival_s,vram_mib,duration_s)");
  EXPECT_EQ(error_of("arrival_s,vram_mib,duration_s\n0,1\n"),
            "line 2: expected 3 fields as in the header, got 2");
  EXPECT_EQ(error_of("arrival_s,vram_mib,duration_s\n0,1,1,\n"),
            "line 2: expected 3 fields as in the header, got 4");
  EXPECT_EQ(error_of("arrival_s,vram_mib,duration_s,job_id\n0,1,1,\"a\n"),
            "line 2: unterminated quoted field");
}

TEST(TraceTest, LoadTracePrefixesThePath) {
  EXPECT_EQ(load_trace("/nonexistent/trace.csv").status().code(), ErrorCode::kNotFound);

  const std::string path = testing::TempDir() + "gpumgr_trace_test.csv";
  {
    std::ofstream out(path);
    out << "arrival_s,vram_mib,duration_s\n0,1,1\n0,x,1\n";
  }
  StatusOr<std::vector<TraceJob>> jobs = load_trace(path);
  ASSERT_FALSE(jobs.ok());
  EXPECT_EQ(jobs.status().message(), path + ": line 3: vram_mib: 'x' is not a number");
  std::remove(path.c_str());
}

}  // namespace
}  // namespace gpumgr::sim
