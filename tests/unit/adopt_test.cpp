// Adopting a lease after a daemon restart (Scheduler::adopt, LocalLedger::adopt_as): the
// lease takes its memory on the devices it had, fit or not and beyond the concurrency limit,
// keeps its times, and is released like any other; bad records change nothing.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "core/local_ledger.h"
#include "core/scheduler.h"
#include "gpumgr/backends.h"
#include "gpumgr/units.h"

namespace gpumgr::core {
namespace {

LeaseRequest req(std::string job, std::uint64_t bytes, int gpus = 1) {
  LeaseRequest r;
  r.job_id = std::move(job);
  r.bytes = bytes;
  r.gpus = gpus;
  return r;
}

Scheduler make(std::vector<std::uint64_t> caps_gib, int max_jobs = 1000) {
  Scheduler s(SchedulerConfig{max_jobs, PlacementPolicy::kBestFit, QueuePolicy::kBackfill},
              caps_gib.size());
  for (std::size_t i = 0; i < caps_gib.size(); ++i) {
    s.set_device(static_cast<int>(i), caps_gib[i] * kGiB, 0, true);
  }
  return s;
}

TEST(AdoptTest, AnAdoptedLeaseTakesItsDevicesEvenBeyondCapacityAndTheLimit) {
  Scheduler s = make({10, 10}, /*max_jobs=*/1);
  const std::vector<int> both{0, 1};
  auto a = s.adopt(req("big", 8 * kGiB, 2), both, Holder{42, 7}, 100, 250);
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  EXPECT_EQ(a.value()->second.devices, both);
  EXPECT_EQ(a.value()->second.holder.pid, 42u);
  EXPECT_EQ(a.value()->second.requested_at, 100);
  EXPECT_EQ(a.value()->second.granted_at, 250);
  // The limit of 1 is reached, and still a second lease is adopted, on memory it overfills.
  const std::vector<int> first{0};
  ASSERT_TRUE(s.adopt(req("more", 5 * kGiB), first, Holder{43, 7}, 0, 0).ok());
  EXPECT_EQ(s.device(0).leased, 13 * kGiB);
  EXPECT_EQ(s.device(0).admissible(), 0u);
  EXPECT_EQ(s.device(1).admissible(), 2 * kGiB);
  EXPECT_EQ(s.active_count(), 2);
  // New requests see the room adopted leases take.
  auto r = s.try_start(req("new", kGiB), Holder{1, 1}, 300);
  EXPECT_EQ(r.status().code(), ErrorCode::kResourceExhausted);
  ASSERT_TRUE(s.release("more", 400).ok());
  ASSERT_TRUE(s.release("big", 400).ok());
  EXPECT_EQ(s.device(0).leased, 0u);
  EXPECT_EQ(s.device(1).leased, 0u);
}

TEST(AdoptTest, BadRecordsAreRefusedAndChangeNothing) {
  Scheduler s = make({10, 10});
  ASSERT_TRUE(s.try_start(req("taken", kGiB), Holder{1, 1}, 0).ok());
  const std::vector<int> zero{0};
  const std::vector<int> twice{1, 1};
  const std::vector<int> missing{2};
  const std::vector<int> none;
  struct Case {
    LeaseRequest request;
    const std::vector<int>* devices;
    ErrorCode code;
    const char* says;
  } cases[] = {
      {req("taken", kGiB), &zero, ErrorCode::kAlreadyExists, "taken"},
      {req("z", 0), &zero, ErrorCode::kInvalidArgument, "some bytes"},
      {req("n", kGiB), &none, ErrorCode::kInvalidArgument, "name its devices"},
      {req("t", kGiB, 2), &twice, ErrorCode::kInvalidArgument, "device 1 twice"},
      {req("m", kGiB), &missing, ErrorCode::kNotFound, "device 2"},
      {req("", kGiB), &zero, ErrorCode::kInvalidArgument, "job id must not be empty"},
      {req("bad\x1b[2J", kGiB), &zero, ErrorCode::kInvalidArgument, "control characters"},
  };
  for (const Case& c : cases) {
    auto a = s.adopt(c.request, *c.devices, Holder{2, 2}, 0, 0);
    ASSERT_FALSE(a.ok()) << c.request.job_id;
    EXPECT_EQ(a.status().code(), c.code) << a.status().to_string();
    EXPECT_NE(a.status().message().find(c.says), std::string::npos) << a.status().to_string();
  }
  EXPECT_EQ(s.active_count(), 1);
  EXPECT_EQ(s.device(0).leased + s.device(1).leased, kGiB);
}

TEST(AdoptTest, TheLedgerKeepsTheLeasesTimesAndReleasesItAsAnyOther) {
  auto sim = std::make_shared<SimulatedBackend>(std::vector<std::uint64_t>{24 * kGiB});
  LedgerConfig config;
  config.memory_limit = 1.0;
  auto ledger = LocalLedger::create(sim, config);
  ASSERT_TRUE(ledger.ok()) << ledger.status().to_string();
  LocalLedger::AdoptedLease a;
  a.request = req("train-7", 5 * kGiB);
  a.request.command = "sleep 3";
  a.request.kind = "train";
  a.devices = {0};
  a.estimate = "learned from 9 runs";
  const auto now = std::chrono::system_clock::now();
  a.granted_at = now - std::chrono::seconds(40);
  a.requested_at = now - std::chrono::seconds(45);
  auto info = (*ledger)->adopt_as(a, Holder{5'000'011, 1000});
  ASSERT_TRUE(info.ok()) << info.status().to_string();
  EXPECT_EQ(info->pid, 5'000'011u);
  EXPECT_EQ(info->uid, 1000u);
  EXPECT_EQ(info->kind, "train");
  EXPECT_EQ(info->estimate, "learned from 9 runs");
  EXPECT_NEAR(info->waited_s, 5.0, 0.5);
  auto snap = (*ledger)->snapshot();
  ASSERT_TRUE(snap.ok());
  ASSERT_EQ(snap->leases.size(), 1u);
  EXPECT_EQ(snap->leases[0].job_id, "train-7");
  EXPECT_EQ(snap->leases[0].command, "sleep 3");
  const double granted_ago =
      std::chrono::duration<double>(std::chrono::system_clock::now() - snap->leases[0].granted_at)
          .count();
  EXPECT_NEAR(granted_ago, 40.0, 1.0);
  EXPECT_EQ(snap->devices[0].leased_bytes, 5 * kGiB);
  // A second adoption of the same job id is refused; a new request for it too.
  EXPECT_EQ((*ledger)->adopt_as(a, Holder{5'000'012, 1000}).status().code(),
            ErrorCode::kAlreadyExists);
  EXPECT_EQ((*ledger)->try_acquire(req("train-7", kGiB)).status().code(),
            ErrorCode::kAlreadyExists);
  ASSERT_TRUE((*ledger)->release_as("train-7", JobOutcome::kSucceeded, 1000).ok());
  snap = (*ledger)->snapshot();
  ASSERT_TRUE(snap.ok());
  EXPECT_TRUE(snap->leases.empty());
  EXPECT_EQ(snap->stats.jobs_succeeded, 1u);
  // Its hold counts from its first grant, 40 s ago.
  EXPECT_GE(snap->stats.hold_seconds.max, 39.0);
}

}  // namespace
}  // namespace gpumgr::core
