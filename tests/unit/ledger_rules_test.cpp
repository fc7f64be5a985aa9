// Rules that other suites check only through a daemon, and only in one environment (root
// with setpriv, a browser), checked here in-process on every run: who may cancel a waiting
// request (LocalLedger::cancel_as), the outside use and overuse of a device through the
// status JSON (what /api/v1/status serves and a remote ledger's snapshot parses), and a
// holder with several leases that goes away losing all of them, not only the first.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "core/local_ledger.h"
#include "core/snapshot_json.h"
#include "gpumgr/backends.h"
#include "gpumgr/units.h"
#include "test_util.h"

namespace gpumgr::core {
namespace {

using gpumgr::testing::ready_within;

constexpr std::uint64_t k24GiB = 24 * kGiB;
// Pids no process has here (above the kernel's pid_max of 4194304): /proc knows none of
// them, so they have no ancestors and no descendants.
constexpr std::uint32_t kPidA = 5'000'011;
constexpr std::uint32_t kPidB = 5'000'012;
constexpr std::uint32_t kUidA = 1000;
constexpr std::uint32_t kUidB = 2000;

LeaseRequest req(std::string job, std::uint64_t bytes, int gpus = 1, int device = -1) {
  LeaseRequest r;
  r.job_id = std::move(job);
  r.bytes = bytes;
  r.gpus = gpus;
  r.device = device;
  return r;
}

struct Fixture {
  std::shared_ptr<SimulatedBackend> sim;
  std::shared_ptr<LocalLedger> ledger;
};

Fixture make(std::vector<std::uint64_t> sizes, int max_jobs = 8) {
  Fixture f;
  f.sim = std::make_shared<SimulatedBackend>(std::move(sizes));
  LedgerConfig c;
  c.max_concurrent_jobs = max_jobs;
  c.poll_interval = std::chrono::milliseconds(10);
  auto l = LocalLedger::create(f.sim, c);
  EXPECT_TRUE(l.ok()) << l.status().to_string();
  if (l.ok()) f.ledger = l.value();
  return f;
}

// A queued request's outcome, delivered by acquire_async's callback (on whichever thread
// ends the wait). Declare it before the ledger: a ledger destroyed with the request still
// waiting (a failed ASSERT returned early) calls the callback, which must find it alive.
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

std::vector<std::string> queued_ids(LocalLedger& l) {
  std::vector<std::string> out;
  auto snap = l.snapshot();
  EXPECT_TRUE(snap.ok()) << snap.status().to_string();
  if (!snap.ok()) return out;
  for (const auto& w : snap->queue) out.push_back(w.job_id);
  return out;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(LedgerRules, OnlyTheQueuingUidOrRootMayCancelAWaitingRequest) {
  Outcome mine, theirs;
  auto f = make({k24GiB}, 1);
  ASSERT_TRUE(f.ledger);
  ASSERT_TRUE(f.ledger->try_acquire_as(req("hold", kGiB), Holder{kPidA, kUidA}).ok());
  f.ledger->acquire_async(req("mine", kGiB), Holder{kPidA, kUidA}, std::nullopt, mine.done());
  f.ledger->acquire_async(req("theirs", kGiB), Holder{kPidA, kUidA}, std::nullopt, theirs.done());
  ASSERT_EQ(queued_ids(*f.ledger), (std::vector<std::string>{"mine", "theirs"}));

  // Another uid: refused, naming both uids; the request keeps waiting, its place too.
  const Status denied = f.ledger->cancel_as("mine", kUidB);
  EXPECT_EQ(denied.code(), ErrorCode::kPermissionDenied) << denied.to_string();
  EXPECT_TRUE(contains(denied.message(), "uid 1000")) << denied.message();
  EXPECT_TRUE(contains(denied.message(), "uid 2000")) << denied.message();
  EXPECT_TRUE(contains(denied.message(), "'mine'")) << denied.message();
  EXPECT_TRUE(mine.pending());
  EXPECT_EQ(queued_ids(*f.ledger), (std::vector<std::string>{"mine", "theirs"}));
  EXPECT_EQ(f.ledger->snapshot().value().stats.jobs_cancelled, 0u);
  // Nothing to cancel: not found, whoever asks.
  EXPECT_EQ(f.ledger->cancel_as("nobody", kUidB).code(), ErrorCode::kNotFound);

  // The uid that queued it may.
  ASSERT_TRUE(f.ledger->cancel_as("mine", kUidA).ok());
  ASSERT_TRUE(ready_within(mine.future, "the callback of 'mine' after its owner cancelled it"));
  EXPECT_EQ(mine.future.get().status().code(), ErrorCode::kCancelled);
  // Root may cancel anyone's.
  EXPECT_EQ(f.ledger->cancel_as("theirs", kUidB).code(), ErrorCode::kPermissionDenied);
  ASSERT_TRUE(f.ledger->cancel_as("theirs", 0).ok());
  ASSERT_TRUE(ready_within(theirs.future, "the callback of 'theirs' after root cancelled it"));
  EXPECT_EQ(theirs.future.get().status().code(), ErrorCode::kCancelled);

  const Snapshot s = f.ledger->snapshot().value();
  EXPECT_TRUE(s.queue.empty());
  EXPECT_EQ(s.stats.jobs_cancelled, 2u);
  EXPECT_EQ(s.leases.size(), 1u);  // the held lease is untouched
}

TEST(LedgerRules, OnlyTheHoldingUidOrRootMayReleaseALease) {
  auto f = make({k24GiB});
  ASSERT_TRUE(f.ledger);
  ASSERT_TRUE(f.ledger->try_acquire_as(req("a", kGiB), Holder{kPidA, kUidA}).ok());
  ASSERT_TRUE(f.ledger->try_acquire_as(req("b", kGiB), Holder{kPidA, kUidA}).ok());
  const Status denied = f.ledger->release_as("a", JobOutcome::kSucceeded, kUidB);
  EXPECT_EQ(denied.code(), ErrorCode::kPermissionDenied) << denied.to_string();
  EXPECT_TRUE(contains(denied.message(), "uid 1000")) << denied.message();
  EXPECT_TRUE(contains(denied.message(), "uid 2000")) << denied.message();
  EXPECT_EQ(f.ledger->snapshot().value().leases.size(), 2u);
  EXPECT_TRUE(f.ledger->release_as("a", JobOutcome::kSucceeded, kUidA).ok());
  EXPECT_TRUE(f.ledger->release_as("b", JobOutcome::kSucceeded, 0).ok());
  EXPECT_TRUE(f.ledger->snapshot().value().leases.empty());
}

TEST(LedgerRules, OutsideUseAndOveruseSurviveTheStatusJson) {
  // Device 0: 3 GiB used by a process with no lease, and a holder using 6 GiB on a 2 GiB
  // lease (4 GiB over it). Device 1: an odd amount of outside use and nothing leased.
  auto f = make({k24GiB, k24GiB});
  ASSERT_TRUE(f.ledger);
  constexpr std::uint64_t kOddForeign = 5 * kGiB + 12345;
  ASSERT_TRUE(f.sim->set_foreign_usage(0, 3 * kGiB).ok());
  ASSERT_TRUE(f.sim->set_foreign_usage(1, kOddForeign).ok());
  ASSERT_TRUE(f.ledger->try_acquire_as(req("over", 2 * kGiB, 1, 0), Holder{kPidA, kUidA}).ok());
  ASSERT_TRUE(f.sim->set_process_usage(0, kPidA, 6 * kGiB).ok());
  ASSERT_TRUE(f.ledger->refresh().ok());
  const Snapshot s = f.ledger->snapshot().value();
  ASSERT_EQ(s.devices.size(), 2u);
  // The figures are there to be carried (else the round trip below proves nothing).
  ASSERT_EQ(s.devices[0].foreign_bytes, 3 * kGiB);
  ASSERT_EQ(s.devices[0].overuse_bytes, 4 * kGiB);
  ASSERT_EQ(s.devices[1].foreign_bytes, kOddForeign);
  ASSERT_EQ(s.devices[1].overuse_bytes, 0u);

  const nlohmann::json j = to_json(s);
  ASSERT_TRUE(j.contains("devices") && j.at("devices").size() == 2u) << j.dump();
  auto field = [&j](std::size_t device, const char* name) {
    const nlohmann::json& d = j.at("devices").at(device);
    return d.contains(name) ? d.at(name) : nlohmann::json();  // null where it is missing
  };
  EXPECT_EQ(field(0, "foreign_bytes"), 3 * kGiB);
  EXPECT_EQ(field(0, "overuse_bytes"), 4 * kGiB);
  EXPECT_EQ(field(1, "foreign_bytes"), kOddForeign);
  EXPECT_EQ(field(1, "overuse_bytes"), 0u);

  // What a remote ledger's snapshot parses from the daemon: the same figures, exactly.
  auto back = snapshot_from_json(nlohmann::json::parse(j.dump()));
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  ASSERT_EQ(back->devices.size(), s.devices.size());
  for (std::size_t i = 0; i < s.devices.size(); ++i) {
    const DeviceAccount& a = s.devices[i];
    const DeviceAccount& b = back->devices[i];
    EXPECT_EQ(b.foreign_bytes, a.foreign_bytes) << "device " << i;
    EXPECT_EQ(b.overuse_bytes, a.overuse_bytes) << "device " << i;
    EXPECT_EQ(b.admissible_bytes, a.admissible_bytes) << "device " << i;
    EXPECT_EQ(b.leased_bytes, a.leased_bytes) << "device " << i;
    EXPECT_EQ(b.capacity_bytes, a.capacity_bytes) << "device " << i;
    EXPECT_EQ(b.info.used_bytes, a.info.used_bytes) << "device " << i;
  }
  ASSERT_EQ(back->leases.size(), 1u);
  EXPECT_EQ(back->leases[0].overused, s.leases[0].overused);
  ASSERT_EQ(back->leases[0].usage.size(), 1u);
  EXPECT_EQ(back->leases[0].usage[0].used_bytes, std::optional<std::uint64_t>(6 * kGiB));
  // And printing the parsed snapshot gives the same devices: nothing lost either way. (Not
  // the whole document: a lease's age is taken when it is printed.)
  const nlohmann::json again = to_json(back.value());
  EXPECT_EQ(again.at("devices"), j.at("devices"));
  EXPECT_EQ(again.at("leases").at(0).at("usage"), j.at("leases").at(0).at("usage"));
}

TEST(LedgerRules, AHolderThatGoesAwayLosesEveryLeaseNotOnlyTheFirst) {
  // Holder A has three leases on two devices and a waiting request; holder B waits for two
  // whole devices' worth (16 GiB on each of both), which fits only once all three of A's
  // leases are gone. A goes away: its waiter is cancelled and each lease released as failed,
  // as the daemon does for a closed connection.
  Outcome a_waits, b_waits;
  auto f = make({k24GiB, k24GiB});
  ASSERT_TRUE(f.ledger);
  const Holder a{kPidA, kUidA};
  ASSERT_TRUE(f.ledger->try_acquire_as(req("a1", 8 * kGiB, 1, 0), a).ok());
  ASSERT_TRUE(f.ledger->try_acquire_as(req("a2", 8 * kGiB, 1, 1), a).ok());
  ASSERT_TRUE(f.ledger->try_acquire_as(req("a3", 4 * kGiB, 1, 0), a).ok());
  f.ledger->acquire_async(req("a4", 16 * kGiB), a, std::nullopt, a_waits.done());
  f.ledger->acquire_async(req("b", 16 * kGiB, 2), Holder{kPidB, kUidB}, std::nullopt,
                          b_waits.done());
  // Fair share: B, who has used nothing, goes before A, who holds three leases.
  ASSERT_EQ(queued_ids(*f.ledger), (std::vector<std::string>{"b", "a4"}));

  ASSERT_TRUE(f.ledger->cancel_as("a4", 0).ok());
  ASSERT_TRUE(ready_within(a_waits.future, "the callback of a4 after it was cancelled"));
  EXPECT_EQ(a_waits.future.get().status().code(), ErrorCode::kCancelled);
  const std::vector<std::string> held = {"a1", "a2", "a3"};
  for (std::size_t i = 0; i < held.size(); ++i) {
    ASSERT_TRUE(f.ledger->release_as(held[i], JobOutcome::kFailed, 0).ok()) << held[i];
    const Snapshot s = f.ledger->snapshot().value();
    // The others of A's leases are still held, with their bytes, until their own release.
    std::vector<std::string> left;
    for (const auto& l : s.leases) left.push_back(l.job_id);
    if (i + 1 < held.size()) {
      EXPECT_EQ(left, std::vector<std::string>(held.begin() + static_cast<long>(i) + 1, held.end()))
          << "after releasing " << held[i];
      EXPECT_TRUE(b_waits.pending()) << "b started with " << held[i + 1] << " still held";
    }
  }
  ASSERT_TRUE(ready_within(b_waits.future, "the grant of b once all of A's leases were released"));
  auto b = b_waits.future.get();
  ASSERT_TRUE(b.ok()) << b.status().to_string();
  EXPECT_EQ(b->devices, (std::vector<int>{0, 1}));

  const Snapshot s = f.ledger->snapshot().value();
  ASSERT_EQ(s.leases.size(), 1u);
  EXPECT_EQ(s.leases[0].job_id, "b");
  EXPECT_TRUE(s.queue.empty());
  for (const auto& d : s.devices) {
    EXPECT_EQ(d.leased_bytes, 16 * kGiB) << "device " << d.info.index;
    EXPECT_EQ(d.active_leases, 1) << "device " << d.info.index;
  }
  EXPECT_EQ(s.stats.jobs_failed, 3u);  // leases dropped with their holder count as failed
  EXPECT_EQ(s.stats.jobs_cancelled, 1u);
  // Released means gone: none of A's job ids can be released again.
  for (const auto& job : held) {
    EXPECT_EQ(f.ledger->release_as(job, JobOutcome::kFailed, 0).code(), ErrorCode::kNotFound)
        << job;
  }
}

}  // namespace
}  // namespace gpumgr::core
