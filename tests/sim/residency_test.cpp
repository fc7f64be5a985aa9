// Models in a replay (docs/simulate.md, "Models and residency"): the same small traces
// replayed unloading the model after every job and keeping models resident, with the start
// times, loads and makespans worked out by hand in the comments; and the shipped studio trace
// with models.
#include "sim/residency.h"

#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "gpumgr/units.h"
#include "sim/replay.h"
#include "sim/trace.h"

namespace gpumgr::sim {
namespace {

std::vector<TraceJob> parse(const std::string& text) {
  std::istringstream in(text);
  StatusOr<std::vector<TraceJob>> jobs = parse_trace(in);
  EXPECT_TRUE(jobs.ok()) << jobs.status().to_string();
  return jobs.ok() ? *jobs : std::vector<TraceJob>{};
}

const SimJob& find(const SimReport& report, const std::string& id) {
  for (const SimJob& j : report.timeline) {
    if (j.job_id == id) return j;
  }
  ADD_FAILURE() << "no job " << id;
  return report.timeline.front();
}

SimReport run(const std::vector<TraceJob>& jobs, Residency residency,
              QueuePolicy queue = QueuePolicy::kBackfill) {
  StatusOr<SimReport> r = replay(jobs, {10 * kGiB}, 1.0, PlacementPolicy::kBestFit, queue, 1 << 30,
                                 2, true, true, 3600, residency);
  EXPECT_TRUE(r.ok()) << r.status().to_string();
  return r.ok() ? *r : SimReport{};
}

// One device of 10 GiB (memory limit 1). Model m: 4 GiB, 10 s to load; model n: 4 GiB, 3 s.
//   a t=0 on m, 2 GiB for 5 s; b t=1 on m, 2 GiB for 5 s; c t=21 on n, 4 GiB for 5 s.
// Unload after every job: a holds 6 GiB for 10 + 5 s, 0..15. b needs 6 GiB, 4 are free: it
//   waits and runs 15..30, loading m again. c needs 8 GiB, 4 are free: it waits and runs
//   30..38. Three loads, 23 s of loading; waits 0, 14, 9.
// Keep resident: a runs 0..15 as before. At 15 the pass grants b on the device where a's
//   model still is: b runs on it for its 5 s alone, 15..20, and at 20 m stays resident
//   (4 GiB). c arrives at 21 and needs 8 GiB beside m's 4: it fits only if m goes, so the
//   scheduler revokes m and c loads n, 21..29. Two loads (a, c), one avoided (b), 13 s of
//   loading, one resident unloaded; waits 0, 14, 0.
const char* const kBackToBack =
    "arrival_s,vram_mib,duration_s,job_id,model,model_vram_mib,load_s\n"
    "0,2048,5,a,m,4096,10\n"
    "1,2048,5,b,m,4096,10\n"
    "21,4096,5,c,n,4096,3\n";

TEST(ResidencyTest, UnloadAfterEveryJobLoadsForEachJob) {
  const SimReport r = run(parse(kBackToBack), Residency::kUnload);
  EXPECT_EQ(r.residency, "unload");
  EXPECT_EQ(r.models.jobs, 3u);
  EXPECT_EQ(r.models.loads, 3u);
  EXPECT_EQ(r.models.loads_avoided, 0u);
  EXPECT_DOUBLE_EQ(r.models.load_s, 23);
  EXPECT_EQ(r.models.unloaded, 0u);
  EXPECT_EQ(r.residents_unloaded, 0u);
  EXPECT_DOUBLE_EQ(find(r, "a").start_s, 0);
  EXPECT_DOUBLE_EQ(find(r, "a").end_s, 15);
  EXPECT_TRUE(find(r, "a").loaded_model);
  EXPECT_DOUBLE_EQ(find(r, "b").start_s, 15);
  EXPECT_DOUBLE_EQ(find(r, "b").end_s, 30);
  EXPECT_TRUE(find(r, "b").loaded_model);
  EXPECT_DOUBLE_EQ(find(r, "c").start_s, 30);
  EXPECT_DOUBLE_EQ(find(r, "c").end_s, 38);
  EXPECT_DOUBLE_EQ(r.makespan_s, 38);
  EXPECT_DOUBLE_EQ(r.mean_wait_s, 23.0 / 3);
  EXPECT_DOUBLE_EQ(r.max_wait_s, 14);
  EXPECT_DOUBLE_EQ(r.mean_turnaround_s, (15.0 + 29 + 17) / 3);
  // The bound counts each job's weights and load: the three jobs are all over half the
  // device, so they run one at a time: 15 + 15 + 8 s (exclusive term).
  EXPECT_DOUBLE_EQ(r.lower_bound_s, 38);
  EXPECT_EQ(r.lower_bound.binding(), "exclusive");
}

TEST(ResidencyTest, KeepResidentLoadsOnceAndTheNextJobStartsAtTheFirstsEnd) {
  const SimReport r = run(parse(kBackToBack), Residency::kResident);
  EXPECT_EQ(r.residency, "resident");
  EXPECT_EQ(r.models.jobs, 3u);
  EXPECT_EQ(r.models.loads, 2u);
  EXPECT_EQ(r.models.loads_avoided, 1u);
  EXPECT_DOUBLE_EQ(r.models.load_s, 13);
  EXPECT_EQ(r.models.unloaded, 1u);  // m, for c
  EXPECT_EQ(r.residents_unloaded, 1u);
  EXPECT_EQ(r.models.dropped, 0u);
  EXPECT_DOUBLE_EQ(find(r, "a").start_s, 0);
  EXPECT_DOUBLE_EQ(find(r, "a").end_s, 15);
  EXPECT_DOUBLE_EQ(find(r, "b").start_s, 15);
  EXPECT_DOUBLE_EQ(find(r, "b").end_s, 20);  // no load
  EXPECT_FALSE(find(r, "b").loaded_model);
  EXPECT_DOUBLE_EQ(find(r, "c").start_s, 21);
  EXPECT_DOUBLE_EQ(find(r, "c").end_s, 29);
  EXPECT_TRUE(find(r, "c").loaded_model);
  EXPECT_DOUBLE_EQ(r.makespan_s, 29);
  EXPECT_DOUBLE_EQ(r.mean_wait_s, 14.0 / 3);
  EXPECT_DOUBLE_EQ(r.mean_turnaround_s, (15.0 + 19 + 8) / 3);
  // Resident mode's bound counts working memory and durations alone: c ends at 26 at best.
  EXPECT_DOUBLE_EQ(r.lower_bound_s, 26);
  EXPECT_LE(r.lower_bound_s, r.makespan_s);
}

// One device of 10 GiB. Models m and n: 4 GiB, 2 s to load; p: 3 GiB, 1 s.
//   x t=0 on m, 1 GiB 1 s: loads, 0..3.  y t=0 on n, 1 GiB 1 s: loads beside x, 0..3.
//   At 3 both models stay resident (8 GiB).
//   z t=4 on m, 1 GiB 1 s: runs at once beside m, 4..5; m was last used at 5, n at 3.
//   w t=6 on p, 3 GiB 2 s: needs 6 GiB, 2 are free: the least recently used resident, n,
//     is revoked (m is kept), and w loads p, 6..9; p stays resident at 9.
//   v t=10 on m, 1 GiB 1 s: m is still resident, with room beside it (10 - 4 - 3 = 3 GiB):
//     it runs at once, 10..11, without a load.
// Unload after every job: x and y 0..3; z 4..7; w 7..10 (z's 5 GiB leave 5 free, w needs
//   6: it waits for z); v 10..13 (w ends at 10, before v arrives).
const char* const kLeastRecentlyUsed =
    "arrival_s,vram_mib,duration_s,job_id,model,model_vram_mib,load_s\n"
    "0,1024,1,x,m,4096,2\n"
    "0,1024,1,y,n,4096,2\n"
    "4,1024,1,z,m,4096,2\n"
    "6,3072,2,w,p,3072,1\n"
    "10,1024,1,v,m,4096,2\n";

TEST(ResidencyTest, TheLeastRecentlyUsedModelGoesAndAResidentOneServesAtOnce) {
  const SimReport r = run(parse(kLeastRecentlyUsed), Residency::kResident);
  EXPECT_EQ(r.models.loads, 3u);  // x, y, w
  EXPECT_EQ(r.models.loads_avoided, 2u);
  EXPECT_DOUBLE_EQ(r.models.load_s, 5);
  EXPECT_EQ(r.models.unloaded, 1u);  // n
  EXPECT_DOUBLE_EQ(find(r, "x").end_s, 3);
  EXPECT_DOUBLE_EQ(find(r, "y").start_s, 0);
  EXPECT_DOUBLE_EQ(find(r, "y").end_s, 3);
  EXPECT_DOUBLE_EQ(find(r, "z").start_s, 4);
  EXPECT_DOUBLE_EQ(find(r, "z").end_s, 5);
  EXPECT_FALSE(find(r, "z").loaded_model);
  EXPECT_DOUBLE_EQ(find(r, "w").start_s, 6);
  EXPECT_DOUBLE_EQ(find(r, "w").end_s, 9);
  EXPECT_DOUBLE_EQ(find(r, "v").start_s, 10);
  EXPECT_DOUBLE_EQ(find(r, "v").end_s, 11);  // m survived: the LRU one was n
  EXPECT_FALSE(find(r, "v").loaded_model);
  EXPECT_DOUBLE_EQ(r.makespan_s, 11);
  EXPECT_DOUBLE_EQ(r.mean_wait_s, 0);

  const SimReport u = run(parse(kLeastRecentlyUsed), Residency::kUnload);
  EXPECT_EQ(u.models.loads, 5u);
  EXPECT_DOUBLE_EQ(u.models.load_s, 9);
  EXPECT_DOUBLE_EQ(find(u, "z").end_s, 7);
  EXPECT_DOUBLE_EQ(find(u, "w").start_s, 7);
  EXPECT_DOUBLE_EQ(find(u, "w").end_s, 10);
  EXPECT_DOUBLE_EQ(find(u, "v").start_s, 10);
  EXPECT_DOUBLE_EQ(u.makespan_s, 13);
  EXPECT_DOUBLE_EQ(u.mean_wait_s, 1.0 / 5);
}

// Two devices of 10 GiB. Model m: 6 GiB, 5 s to load.
//   a t=0 on m, 2 GiB 10 s: loads on device 0, 0..15.  At 15 m stays resident there.
//   b t=16 on m, 4 GiB 10 s: room beside m (4 GiB): runs at once on device 0, 16..26.
//   c t=17 on m, 2 GiB 10 s: no room beside m's copy (b holds the rest): rather than wait
//     for device 0 it loads a second copy on device 1, 17..32.
//   d t=18 on m, 2 GiB 1 s: no room beside the copy; it queues to load m on device 1, where
//     c's load leaves 2 GiB. At 26 b ends and room beside the copy on device 0 comes first:
//     d runs there, 26..27, without a load (its queued load is cancelled).
TEST(ResidencyTest, ABusyCopyMakesASecondOneAndAWaiterTakesWhicheverRoomComesFirst) {
  const std::vector<TraceJob> jobs = parse(
      "arrival_s,vram_mib,duration_s,job_id,model,model_vram_mib,load_s\n"
      "0,2048,10,a,m,6144,5\n"
      "16,4096,10,b,m,6144,5\n"
      "17,2048,10,c,m,6144,5\n"
      "18,2048,1,d,m,6144,5\n");
  StatusOr<SimReport> r =
      replay(jobs, {10 * kGiB, 10 * kGiB}, 1.0, PlacementPolicy::kBestFit, QueuePolicy::kBackfill,
             1 << 30, 2, true, true, 3600, Residency::kResident);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(find(*r, "a").devices, std::vector<int>{0});
  EXPECT_DOUBLE_EQ(find(*r, "b").start_s, 16);
  EXPECT_EQ(find(*r, "b").devices, std::vector<int>{0});
  EXPECT_FALSE(find(*r, "b").loaded_model);
  EXPECT_DOUBLE_EQ(find(*r, "c").start_s, 17);
  EXPECT_DOUBLE_EQ(find(*r, "c").end_s, 32);
  EXPECT_EQ(find(*r, "c").devices, std::vector<int>{1});
  EXPECT_TRUE(find(*r, "c").loaded_model);
  EXPECT_DOUBLE_EQ(find(*r, "d").start_s, 26);
  EXPECT_DOUBLE_EQ(find(*r, "d").end_s, 27);
  EXPECT_EQ(find(*r, "d").devices, std::vector<int>{0});
  EXPECT_FALSE(find(*r, "d").loaded_model);
  EXPECT_EQ(r->models.loads, 2u);
  EXPECT_EQ(r->models.loads_avoided, 2u);
  EXPECT_DOUBLE_EQ(r->makespan_s, 32);
}

// One device of 10 GiB. Model m: 4 GiB, 10 s to load.
//   a t=0 on m, 2 GiB 5 s: loads, 0..15; m stays resident.
//   b t=16 on m, 5 GiB 10 s: beside m at once, 16..26 (1 GiB left).
//   c t=17 on m, 2 GiB 1 s: m is resident on every device, so c waits for working memory
//     beside it, and its request names m (LeaseRequest::beside_resident). c fits nowhere, and
//     m is the only resident, but m is never revoked for the waiter that runs beside it: c
//     waits for b and runs beside m, 26..27. (Without the name, the scheduler revoked m for c,
//     and c loaded m again, 26..37.)
TEST(ResidencyTest, AWaiterBesideTheOnlyCopyOfItsModelNeverHasItRevoked) {
  const SimReport r = run(parse("arrival_s,vram_mib,duration_s,job_id,model,model_vram_mib,load_s\n"
                                "0,2048,5,a,m,4096,10\n"
                                "16,5120,10,b,m,4096,10\n"
                                "17,2048,1,c,m,4096,10\n"),
                          Residency::kResident);
  EXPECT_DOUBLE_EQ(find(r, "b").start_s, 16);
  EXPECT_DOUBLE_EQ(find(r, "b").end_s, 26);
  EXPECT_FALSE(find(r, "b").loaded_model);
  EXPECT_DOUBLE_EQ(find(r, "c").start_s, 26);
  EXPECT_DOUBLE_EQ(find(r, "c").end_s, 27);
  EXPECT_FALSE(find(r, "c").loaded_model);
  EXPECT_EQ(r.models.loads, 1u);
  EXPECT_EQ(r.models.loads_avoided, 2u);
  EXPECT_EQ(r.models.unloaded, 0u);
  EXPECT_DOUBLE_EQ(r.makespan_s, 27);
}

// One device of 10 GiB. Models m and n: 4 GiB, 2 s to load; p: 2 GiB, 1 s.
//   x t=0 on m and y t=0 on n, 1 GiB 1 s each: both load, 0..3; both stay resident.
//   z t=4 on m, 1 GiB 10 s: beside m at once, 4..14 (m is in use, last used at 4).
//   u t=4.5 on n, 1 GiB 0.5 s: beside n at once, 4.5..5 (n idle again, last used at 5).
//   w t=6 on p, 1 GiB 1 s: needs 3 GiB, 1 is free. m is the least recently used, but z runs
//     beside it: the idle n goes, and w loads p at once, 6..8. (Least recently used alone
//     took m, and w waited for z: 14..16.)
TEST(ResidencyTest, AnIdleCopyGoesBeforeACopyInUse) {
  const SimReport r = run(parse("arrival_s,vram_mib,duration_s,job_id,model,model_vram_mib,load_s\n"
                                "0,1024,1,x,m,4096,2\n"
                                "0,1024,1,y,n,4096,2\n"
                                "4,1024,10,z,m,4096,2\n"
                                "4.5,1024,0.5,u,n,4096,2\n"
                                "6,1024,1,w,p,2048,1\n"),
                          Residency::kResident);
  EXPECT_DOUBLE_EQ(find(r, "z").start_s, 4);
  EXPECT_FALSE(find(r, "z").loaded_model);
  EXPECT_DOUBLE_EQ(find(r, "u").start_s, 4.5);
  EXPECT_FALSE(find(r, "u").loaded_model);
  EXPECT_DOUBLE_EQ(find(r, "w").start_s, 6);
  EXPECT_DOUBLE_EQ(find(r, "w").end_s, 8);
  EXPECT_EQ(r.models.unloaded, 1u);  // n
  EXPECT_EQ(r.models.unloaded_in_use, 0u);
  EXPECT_DOUBLE_EQ(r.makespan_s, 14);
}

// The same device; only m is resident, and z runs beside it when w, which needs 6 GiB, comes:
// m is revoked though in use, and goes when z ends (14); w runs 14..15.
TEST(ResidencyTest, ACopyInUseGoesWhenItIsTheOnlyRoomAndIsCountedSo) {
  const SimReport r = run(parse("arrival_s,vram_mib,duration_s,job_id,model,model_vram_mib,load_s\n"
                                "0,1024,1,x,m,4096,2\n"
                                "4,1024,10,z,m,4096,2\n"
                                "5,6144,1,w,,,\n"),
                          Residency::kResident);
  EXPECT_DOUBLE_EQ(find(r, "z").start_s, 4);
  EXPECT_DOUBLE_EQ(find(r, "w").start_s, 14);
  EXPECT_EQ(r.models.unloaded, 1u);
  EXPECT_EQ(r.models.unloaded_in_use, 1u);
}

TEST(ResidencyTest, JobsWithoutModelsReplayTheSameEitherWay) {
  const std::vector<TraceJob> jobs =
      parse("arrival_s,vram_mib,duration_s\n0,8192,10\n1,8192,5\n2,1024,3\n");
  const SimReport u = run(jobs, Residency::kUnload);
  const SimReport k = run(jobs, Residency::kResident);
  EXPECT_EQ(u.residency, "");  // no model column: no model figures either
  EXPECT_EQ(k.residency, "");
  EXPECT_DOUBLE_EQ(u.makespan_s, 15);
  EXPECT_DOUBLE_EQ(k.makespan_s, 15);
  EXPECT_DOUBLE_EQ(u.mean_wait_s, k.mean_wait_s);
  EXPECT_EQ(k.models.loads + k.models.loads_avoided, 0u);
}

TEST(ResidencyTest, AModelThatCanNeverFitIsNamed) {
  const std::vector<TraceJob> jobs = parse(
      "arrival_s,vram_mib,duration_s,job_id,model,model_vram_mib,load_s\n"
      "0,4096,1,big,m,8192,1\n");
  for (const Residency residency : {Residency::kUnload, Residency::kResident}) {
    StatusOr<SimReport> r = replay(jobs, {10 * kGiB}, 1.0, PlacementPolicy::kBestFit,
                                   QueuePolicy::kBackfill, 1 << 30, 2, true, true, 3600, residency);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), ErrorCode::kNeverFits);
    EXPECT_NE(r.status().message().find("job 'big'"), std::string::npos) << r.status().message();
  }
}

// The shipped trace with models (bench/traces/studio_models.csv) on the pool it is made for:
// every policy replays it both ways; kept resident, it loads models strictly less often.
TEST(ResidencyTest, TheShippedStudioTraceLoadsLessWhenModelsStayResident) {
  StatusOr<std::vector<TraceJob>> jobs =
      load_trace(std::string(GPUMGR_SOURCE_DIR) + "/bench/traces/studio_models.csv");
  ASSERT_TRUE(jobs.ok()) << jobs.status().to_string();
  ASSERT_EQ(jobs->size(), 1500u);
  const std::vector<std::uint64_t> pool(4, 40 * kGiB);
  for (const QueuePolicy queue :
       {QueuePolicy::kFifo, QueuePolicy::kGreedy, QueuePolicy::kBackfill}) {
    StatusOr<SimReport> u = replay(*jobs, pool, 0.8, PlacementPolicy::kBestFit, queue, 1 << 30, 2,
                                   true, true, 3600, Residency::kUnload);
    StatusOr<SimReport> k = replay(*jobs, pool, 0.8, PlacementPolicy::kBestFit, queue, 1 << 30, 2,
                                   true, true, 3600, Residency::kResident);
    ASSERT_TRUE(u.ok()) << u.status().to_string();
    ASSERT_TRUE(k.ok()) << k.status().to_string();
    SCOPED_TRACE(k->policy);
    EXPECT_EQ(u->models.jobs, 1500u);
    EXPECT_EQ(u->models.loads, 1500u);
    EXPECT_EQ(k->models.loads + k->models.loads_avoided, 1500u);
    EXPECT_LT(k->models.loads, u->models.loads);
    EXPECT_LT(k->models.load_s, u->models.load_s);
    EXPECT_GE(u->makespan_s, u->lower_bound_s);
    EXPECT_GE(k->makespan_s, k->lower_bound_s);
    EXPECT_LE(k->utilization, 1.0);
    std::size_t loaded = 0;
    for (const SimJob& j : k->timeline) {
      EXPECT_GE(j.start_s, j.arrival_s) << j.job_id;
      loaded += j.loaded_model ? 1 : 0;
    }
    EXPECT_EQ(loaded, k->models.loads);
  }
}

}  // namespace
}  // namespace gpumgr::sim
