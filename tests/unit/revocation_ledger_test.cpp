// Revocations in the ledger (core/revocation.h): the holder of a revoked lease is told at
// once; one that releases within the grace frees the memory for the waiter; one that does
// not is killed (SIGKILL to its tree) and its lease released; the counters and the snapshot
// say so. The holders are pids no process has, and the signals are recorded, not sent.
#include <gtest/gtest.h>
#include <signal.h>

#include <cmath>
#include <future>
#include <limits>
#include <mutex>
#include <vector>

#include "core/local_ledger.h"
#include "core/snapshot_json.h"
#include "gpumgr/backends.h"
#include "gpumgr/units.h"
#include "test_util.h"

namespace gpumgr::core {
namespace {

using gpumgr::testing::wait_until;

// Above the kernel's pid_max: /proc knows none of them.
constexpr std::uint32_t kHolder = 5'000'011;
constexpr std::uint32_t kWaiter = 5'000'012;

LeaseRequest req(std::string job, std::uint64_t gib, int priority = 0) {
  LeaseRequest r;
  r.job_id = std::move(job);
  r.bytes = gib * kGiB;
  r.priority = priority;
  return r;
}

struct Fixture {
  std::shared_ptr<SimulatedBackend> sim;
  std::shared_ptr<LocalLedger> ledger;
  std::mutex mu;
  std::vector<RevokeNotice> notices;
  std::vector<std::pair<std::uint32_t, int>> signals;
  std::size_t notice_count() {
    std::lock_guard lock(mu);
    return notices.size();
  }
};

// One device of 10 GiB at memory limit 1.
std::unique_ptr<Fixture> make(double grace_s) {
  auto f = std::make_unique<Fixture>();
  f->sim = std::make_shared<SimulatedBackend>(std::vector<std::uint64_t>{10 * kGiB});
  LedgerConfig c;
  c.max_concurrent_jobs = 8;
  c.memory_limit = 1.0;
  c.poll_interval = std::chrono::milliseconds(10);
  c.revoke_grace_s = grace_s;
  auto l = LocalLedger::create(f->sim, c);
  EXPECT_TRUE(l.ok()) << l.status().to_string();
  if (!l.ok()) return f;
  f->ledger = l.value();
  Fixture* raw = f.get();
  f->ledger->set_revoke_handler([raw](const RevokeNotice& n) {
    std::lock_guard lock(raw->mu);
    raw->notices.push_back(n);
  });
  f->ledger->set_signaller([raw](std::uint32_t pid, int sig) {
    std::lock_guard lock(raw->mu);
    raw->signals.emplace_back(pid, sig);
    return 1;
  });
  return f;
}

// Queues a waiter; the future has its result.
std::future<StatusOr<LeaseInfo>> wait_for(LocalLedger& ledger, const LeaseRequest& r) {
  auto promise = std::make_shared<std::promise<StatusOr<LeaseInfo>>>();
  auto future = promise->get_future();
  ledger.acquire_async(r, Holder{kWaiter, 1000}, std::nullopt,
                       [promise](StatusOr<LeaseInfo> result) { promise->set_value(result); });
  return future;
}

TEST(RevocationLedger, AHolderThatReleasesWithinTheGraceIsToldAndNotKilled) {
  auto f = make(60);
  ASSERT_TRUE(f->ledger);
  LeaseRequest job = req("batch", 8);
  job.preemptible = true;
  ASSERT_TRUE(f->ledger->try_acquire_as(job, Holder{kHolder, 1000}).ok());
  auto waiter = wait_for(*f->ledger, req("urgent", 6, 5));

  // Told at once, with the waiter, the cause and the grace.
  ASSERT_EQ(f->notice_count(), 1u);
  {
    std::lock_guard lock(f->mu);
    EXPECT_EQ(f->notices[0].job_id, "batch");
    EXPECT_EQ(f->notices[0].cause, "preempted");
    EXPECT_EQ(f->notices[0].for_job, "urgent");
    EXPECT_EQ(f->notices[0].grace_s, 60);
    EXPECT_FALSE(f->notices[0].ended);
  }
  // While being revoked, the lease still counts, and the snapshot says so.
  const Snapshot s = f->ledger->snapshot().value();
  ASSERT_EQ(s.leases.size(), 1u);
  EXPECT_EQ(s.leases[0].revocable, "preemptible");
  EXPECT_TRUE(s.leases[0].revoking);
  EXPECT_EQ(s.leases[0].revoked_for, "urgent");
  EXPECT_GT(s.leases[0].revoke_in_s, 50);
  EXPECT_LE(s.leases[0].revoke_in_s, 60);
  EXPECT_EQ(s.devices[0].leased_bytes, 8 * kGiB);
  EXPECT_EQ(s.stats.revocations_preempted, 1u);
  EXPECT_EQ(s.stats.revocations_resident, 0u);
  EXPECT_EQ(waiter.wait_for(std::chrono::milliseconds(0)), std::future_status::timeout);

  ASSERT_TRUE(f->ledger->release_as("batch", JobOutcome::kFailed, 1000).ok());
  ASSERT_EQ(waiter.wait_for(gpumgr::testing::kGenerous), std::future_status::ready);
  auto granted = waiter.get();
  ASSERT_TRUE(granted.ok()) << granted.status().to_string();
  EXPECT_EQ(granted->job_id, "urgent");
  const Snapshot after = f->ledger->snapshot().value();
  EXPECT_EQ(after.stats.revocation_kills, 0u);
  std::lock_guard lock(f->mu);
  EXPECT_TRUE(f->signals.empty());
  EXPECT_EQ(f->notices.size(), 1u);
}

TEST(RevocationLedger, AHolderThatIgnoresItIsKilledAtTheGraceAndTheWaiterStarts) {
  auto f = make(60);
  ASSERT_TRUE(f->ledger);
  LeaseRequest model = req("model", 8);
  model.resident = "llama";
  model.revoke_grace_s = 0.2;  // the request's own grace wins over the ledger's 60 s
  ASSERT_TRUE(f->ledger->try_acquire_as(model, Holder{kHolder, 1000}).ok());
  const auto revoked_at = std::chrono::steady_clock::now();
  auto waiter = wait_for(*f->ledger, req("next", 6));
  ASSERT_EQ(waiter.wait_for(gpumgr::testing::kGenerous), std::future_status::ready);
  const double took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - revoked_at).count();
  auto granted = waiter.get();
  ASSERT_TRUE(granted.ok()) << granted.status().to_string();
  EXPECT_GE(took, 0.2);

  const Snapshot s = f->ledger->snapshot().value();
  ASSERT_EQ(s.leases.size(), 1u);
  EXPECT_EQ(s.leases[0].job_id, "next");
  EXPECT_EQ(s.devices[0].leased_bytes, 6 * kGiB);  // nothing of the killed lease is left
  EXPECT_EQ(s.stats.revocations_resident, 1u);
  EXPECT_EQ(s.stats.revocation_kills, 1u);
  EXPECT_EQ(s.stats.jobs_failed, 1u);
  std::lock_guard lock(f->mu);
  ASSERT_EQ(f->signals.size(), 1u);
  EXPECT_EQ(f->signals[0], std::make_pair(kHolder, SIGKILL));
  ASSERT_EQ(f->notices.size(), 2u);
  EXPECT_EQ(f->notices[0].cause, "resident");
  EXPECT_EQ(f->notices[0].grace_s, 0.2);
  EXPECT_TRUE(f->notices[1].ended);
  EXPECT_EQ(f->notices[1].job_id, "model");
}

TEST(RevocationLedger, ExplicitRevokeAndTouchCheckTheHolder) {
  auto f = make(60);
  ASSERT_TRUE(f->ledger);
  LeaseRequest model = req("model", 2);
  model.resident = "llama";
  ASSERT_TRUE(f->ledger->try_acquire_as(model, Holder{kHolder, 1000}).ok());
  ASSERT_TRUE(f->ledger->try_acquire_as(req("plain", 2), Holder{kHolder, 1000}).ok());
  EXPECT_EQ(f->ledger->touch_as("model", 1001).code(), ErrorCode::kPermissionDenied);
  EXPECT_TRUE(f->ledger->touch_as("model", 1000).ok());
  EXPECT_EQ(f->ledger->revoke_as("model", 1001).code(), ErrorCode::kPermissionDenied);
  EXPECT_EQ(f->ledger->revoke_as("plain", 1000).code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(f->ledger->revoke_as("nobody", 1000).code(), ErrorCode::kNotFound);
  EXPECT_EQ(f->notice_count(), 0u);
  EXPECT_TRUE(f->ledger->revoke_as("model", 1000).ok());
  ASSERT_EQ(f->notice_count(), 1u);
  {
    std::lock_guard lock(f->mu);
    EXPECT_EQ(f->notices[0].for_job, "");
  }
  EXPECT_EQ(f->ledger->touch_as("model", 1000).code(), ErrorCode::kFailedPrecondition);
  const Snapshot s = f->ledger->snapshot().value();
  EXPECT_EQ(s.stats.revocations_resident, 1u);
}

TEST(RevocationLedger, ABadGraceIsRefusedByName) {
  for (const double grace : {-1.0, std::nan(""), std::numeric_limits<double>::infinity(), 1e6}) {
    LedgerConfig c;
    c.revoke_grace_s = grace;
    const Status s = validate_config(c);
    EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << grace;
    EXPECT_NE(s.message().find("revoke grace"), std::string::npos) << s.message();
  }
  auto f = make(60);
  ASSERT_TRUE(f->ledger);
  LeaseRequest job = req("job", 1);
  job.preemptible = true;
  job.revoke_grace_s = -5;
  const Status s = f->ledger->try_acquire_as(job, Holder{kHolder, 1000}).status();
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(s.message().find("revoke grace"), std::string::npos) << s.message();
  EXPECT_TRUE(f->ledger->snapshot().value().leases.empty());
}

TEST(RevocationLedger, TheSnapshotSaysWhichJobsRunBesideAResident) {
  auto f = make(60);
  ASSERT_TRUE(f->ledger);
  LeaseRequest model = req("model", 4);
  model.resident = "llama";
  ASSERT_TRUE(f->ledger->try_acquire_as(model, Holder{kHolder, 1000}).ok());
  LeaseRequest job = req("request-1", 2);
  job.beside_resident = "llama";
  ASSERT_TRUE(f->ledger->try_acquire_as(job, Holder{kHolder, 1000}).ok());
  job.job_id = "request-2";
  ASSERT_TRUE(f->ledger->try_acquire_as(job, Holder{kHolder, 1000}).ok());
  ASSERT_TRUE(f->ledger->release("request-1", JobOutcome::kSucceeded).ok());

  const Snapshot s = f->ledger->snapshot().value();
  ASSERT_EQ(s.leases.size(), 2u);
  for (const LeaseInfo& l : s.leases) {
    SCOPED_TRACE(l.job_id);
    const bool is_model = l.job_id == "model";
    EXPECT_EQ(l.in_use_by, is_model ? 1 : 0);
    EXPECT_EQ(l.beside_resident, is_model ? "" : "llama");
    // The status JSON carries both, and a client reads them back.
    const nlohmann::json j = to_json(l);
    EXPECT_EQ(j.contains("in_use_by"), is_model);
    EXPECT_EQ(j.contains("beside_resident"), !is_model);
    const StatusOr<LeaseInfo> back = lease_from_json(j);
    ASSERT_TRUE(back.ok()) << back.status().to_string();
    EXPECT_EQ(back->in_use_by, l.in_use_by);
    EXPECT_EQ(back->beside_resident, l.beside_resident);
  }
}

}  // namespace
}  // namespace gpumgr::core
