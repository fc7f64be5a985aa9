// LocalLedger::reconfigure, what a reload of the daemon's configuration applies: raised
// limits let waiters start, lowered ones revoke no lease, and a refused configuration changes
// nothing (leases, waiters, limits).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "core/local_ledger.h"
#include "gpumgr/backends.h"
#include "gpumgr/units.h"
#include "test_util.h"

namespace gpumgr::core {
namespace {

using gpumgr::testing::ready_within;

constexpr std::uint32_t kPid = 5'000'021;  // no such process: no ancestors, no use
constexpr std::uint32_t kUid = 1000;

LeaseRequest req(std::string job, std::uint64_t bytes) {
  LeaseRequest r;
  r.job_id = std::move(job);
  r.bytes = bytes;
  return r;
}

// A queued request's outcome. Declare it before the ledger (see ledger_rules_test.cpp).
struct Outcome {
  std::promise<StatusOr<LeaseInfo>> promise;
  std::future<StatusOr<LeaseInfo>> future = promise.get_future();
  LocalLedger::Done done() {
    return [this](StatusOr<LeaseInfo> r) { promise.set_value(std::move(r)); };
  }
  bool pending() {
    return future.wait_for(std::chrono::milliseconds(0)) != std::future_status::ready;
  }
};

LedgerConfig config(int max_jobs, double memory_limit) {
  LedgerConfig c;
  c.max_concurrent_jobs = max_jobs;
  c.memory_limit = memory_limit;
  c.poll_interval = std::chrono::milliseconds(10);
  return c;
}

std::shared_ptr<LocalLedger> make(const LedgerConfig& c) {
  auto sim = std::make_shared<SimulatedBackend>(std::vector<std::uint64_t>{10 * kGiB});
  auto l = LocalLedger::create(sim, c);
  EXPECT_TRUE(l.ok()) << l.status().to_string();
  return l.ok() ? l.value() : nullptr;
}

struct State {
  std::vector<std::string> leases;
  std::vector<std::string> queue;
  int max_jobs = 0;
  double memory_limit = 0;
  std::uint64_t capacity = 0;
};

State state_of(LocalLedger& l) {
  State s;
  auto snap = l.snapshot();
  EXPECT_TRUE(snap.ok()) << snap.status().to_string();
  if (!snap.ok()) return s;
  for (const auto& lease : snap->leases) s.leases.push_back(lease.job_id);
  for (const auto& w : snap->queue) s.queue.push_back(w.job_id);
  s.max_jobs = snap->config.max_concurrent_jobs;
  s.memory_limit = snap->config.memory_limit;
  s.capacity = snap->devices.at(0).capacity_bytes;
  return s;
}

TEST(ConfigReloadLedger, ARaisedJobLimitLetsAWaiterStart) {
  Outcome waiter;
  auto l = make(config(1, 0.8));
  ASSERT_TRUE(l);
  ASSERT_TRUE(l->try_acquire_as(req("held", kGiB), Holder{kPid, kUid}).ok());
  l->acquire_async(req("waits", kGiB), Holder{kPid, kUid}, std::nullopt, waiter.done());
  ASSERT_EQ(state_of(*l).queue, std::vector<std::string>{"waits"});
  ASSERT_TRUE(waiter.pending());

  ASSERT_TRUE(l->reconfigure(config(2, 0.8)).ok());
  ASSERT_TRUE(ready_within(waiter.future, "the grant of 'waits' after the limit was raised"));
  auto granted = waiter.future.get();
  ASSERT_TRUE(granted.ok()) << granted.status().to_string();
  const State after = state_of(*l);
  EXPECT_EQ(after.leases, (std::vector<std::string>{"held", "waits"}));
  EXPECT_TRUE(after.queue.empty());
  EXPECT_EQ(after.max_jobs, 2);
}

TEST(ConfigReloadLedger, ARaisedMemoryLimitLetsAWaiterStart) {
  Outcome waiter;
  auto l = make(config(4, 0.5));  // 5 GiB of 10 GiB
  ASSERT_TRUE(l);
  ASSERT_TRUE(l->try_acquire_as(req("held", 4 * kGiB), Holder{kPid, kUid}).ok());
  l->acquire_async(req("waits", 3 * kGiB), Holder{kPid, kUid}, std::nullopt, waiter.done());
  ASSERT_EQ(state_of(*l).queue, std::vector<std::string>{"waits"});
  EXPECT_EQ(state_of(*l).capacity, 5 * kGiB);

  ASSERT_TRUE(l->reconfigure(config(4, 0.8)).ok());
  ASSERT_TRUE(ready_within(waiter.future, "the grant of 'waits' after the memory limit rose"));
  ASSERT_TRUE(waiter.future.get().ok());
  const State after = state_of(*l);
  EXPECT_EQ(after.capacity, 8 * kGiB);
  EXPECT_EQ(after.memory_limit, 0.8);
  EXPECT_EQ(after.leases.size(), 2u);
}

TEST(ConfigReloadLedger, LoweredLimitsRevokeNoLeaseAndStartNoNewOne) {
  Outcome waiter;
  auto l = make(config(3, 0.8));
  ASSERT_TRUE(l);
  ASSERT_TRUE(l->try_acquire_as(req("a", 3 * kGiB), Holder{kPid, kUid}).ok());
  ASSERT_TRUE(l->try_acquire_as(req("b", 3 * kGiB), Holder{kPid, kUid}).ok());
  // The job limit below what is held (2 leases > 1): both run on; a job that fits the memory
  // (6 of 8 GiB leased) does not start.
  ASSERT_TRUE(l->reconfigure(config(1, 0.8)).ok());
  EXPECT_EQ(state_of(*l).leases.size(), 2u);
  auto refused = l->try_acquire_as(req("c", kGiB), Holder{kPid, kUid});
  EXPECT_EQ(refused.status().code(), ErrorCode::kResourceExhausted) << refused.status().to_string();
  // The memory limit below what is held too (6 GiB > 2.5 GiB): still both.
  ASSERT_TRUE(l->reconfigure(config(1, 0.25)).ok());
  State s = state_of(*l);
  EXPECT_EQ(s.leases.size(), 2u);
  EXPECT_EQ(s.capacity, 10 * kGiB / 4);
  l->acquire_async(req("c", kGiB), Holder{kPid, kUid}, std::nullopt, waiter.done());
  // Releasing one lease leaves 1 active, still at the limit: 'c' keeps waiting.
  ASSERT_TRUE(l->release_as("a", JobOutcome::kSucceeded, kUid).ok());
  EXPECT_TRUE(waiter.pending());
  EXPECT_EQ(state_of(*l).queue, std::vector<std::string>{"c"});
  // The other one ends: 'c' fits both limits now.
  ASSERT_TRUE(l->release_as("b", JobOutcome::kSucceeded, kUid).ok());
  ASSERT_TRUE(ready_within(waiter.future, "the grant of 'c' once the held leases ended"));
  EXPECT_TRUE(waiter.future.get().ok());
}

TEST(ConfigReloadLedger, ARefusedConfigurationChangesNothing) {
  Outcome waiter;
  auto l = make(config(1, 0.5));
  ASSERT_TRUE(l);
  ASSERT_TRUE(l->try_acquire_as(req("held", kGiB), Holder{kPid, kUid}).ok());
  l->acquire_async(req("waits", kGiB), Holder{kPid, kUid}, std::nullopt, waiter.done());
  const State before = state_of(*l);
  ASSERT_EQ(before.queue, std::vector<std::string>{"waits"});

  LedgerConfig bad_limit = config(5, 1.5);  // an invalid memory limit with a raised job limit
  const Status s = l->reconfigure(bad_limit);
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "memory_limit must be in (0, 1], got 1.5");
  LedgerConfig other_queue = config(5, 0.9);
  other_queue.queue = QueuePolicy::kFifo;
  EXPECT_EQ(l->reconfigure(other_queue).code(), ErrorCode::kInvalidArgument);
  LedgerConfig other_history = config(5, 0.9);
  other_history.history_path = "/tmp/elsewhere.db";
  EXPECT_EQ(l->reconfigure(other_history).code(), ErrorCode::kInvalidArgument);

  // The raised job limit of the refused configurations was not applied either.
  EXPECT_TRUE(waiter.pending());
  const State after = state_of(*l);
  EXPECT_EQ(after.leases, before.leases);
  EXPECT_EQ(after.queue, before.queue);
  EXPECT_EQ(after.max_jobs, 1);
  EXPECT_EQ(after.memory_limit, 0.5);
  EXPECT_EQ(after.capacity, before.capacity);
}

}  // namespace
}  // namespace gpumgr::core
