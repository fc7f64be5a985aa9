// The scheduler's revocation rule on a virtual clock (docs/scheduling.md, "Revocable
// leases"): the least set that makes a waiter fit, residents before preemptible jobs, least
// recently used residents first, priorities respected, nothing for a waiter that fits
// elsewhere, gangs all or nothing, and no second revocation for a waiter with some pending.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/scheduler.h"
#include "gpumgr/units.h"

namespace gpumgr::core {
namespace {

constexpr TimeNs kSecond = 1'000'000'000;

LeaseRequest req(std::string id, std::uint64_t gib, int priority = 0, int gpus = 1,
                 int device = -1) {
  LeaseRequest r;
  r.job_id = std::move(id);
  r.bytes = gib * kGiB;
  r.priority = priority;
  r.gpus = gpus;
  r.device = device;
  return r;
}
LeaseRequest resident(std::string name, std::uint64_t gib, int device, int priority = 0) {
  LeaseRequest r = req("resident-" + name, gib, priority, 1, device);
  r.resident = std::move(name);
  return r;
}
LeaseRequest preemptible(std::string id, std::uint64_t gib, int device, int priority = 0) {
  LeaseRequest r = req(std::move(id), gib, priority, 1, device);
  r.preemptible = true;
  return r;
}

Scheduler make(std::vector<std::uint64_t> caps_gib, int max_jobs = 1000,
               QueuePolicy queue = QueuePolicy::kBackfill) {
  Scheduler s(SchedulerConfig{max_jobs, PlacementPolicy::kBestFit, queue}, caps_gib.size());
  for (std::size_t i = 0; i < caps_gib.size(); ++i) {
    s.set_device(static_cast<int>(i), caps_gib[i] * kGiB, 0, true);
  }
  return s;
}

void start(Scheduler& s, const LeaseRequest& r, TimeNs now = 0) {
  auto g = s.try_start(r, Holder{1, 1}, now);
  ASSERT_TRUE(g.ok()) << r.job_id << ": " << g.status().to_string();
}

std::vector<Grant> wait(Scheduler& s, const LeaseRequest& r, TimeNs now = 0) {
  auto g = s.enqueue(r, Holder{2, 2}, now, std::nullopt);
  EXPECT_TRUE(g.ok()) << g.status().to_string();
  return g.ok() ? g.value() : std::vector<Grant>{};
}

// The revoked job ids, sorted, each with the waiter it was revoked for.
std::vector<std::pair<std::string, std::string>> revoked(Scheduler& s) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const Revocation& r : s.take_revocations()) out.emplace_back(r.job_id, r.for_job);
  std::sort(out.begin(), out.end());
  return out;
}
using Pairs = std::vector<std::pair<std::string, std::string>>;

TEST(Revocation, RevokesTheLeastSetThatMakesTheWaiterFit) {
  // Device 0: three residents, the least recently used first; the waiter needs 6 GiB. The
  // first two in LRU order would free 8 GiB, but the 6 GiB one alone is enough.
  Scheduler s = make({10});
  start(s, resident("a", 2, 0), 1 * kSecond);
  start(s, resident("b", 6, 0), 2 * kSecond);
  start(s, resident("c", 2, 0), 3 * kSecond);
  EXPECT_TRUE(wait(s, req("w", 6), 4 * kSecond).empty());
  EXPECT_EQ(revoked(s), (Pairs{{"resident-b", "w"}}));
  // The revoked lease stays counted until it is released; then the waiter starts.
  EXPECT_EQ(s.device(0).leased, 10 * kGiB);
  EXPECT_EQ(s.revoking_count(), 1);
  ASSERT_TRUE(s.release("resident-b", 5 * kSecond).ok());
  const auto grants = s.schedule(5 * kSecond);
  ASSERT_EQ(grants.size(), 1u);
  EXPECT_EQ(grants[0].job_id, "w");
  EXPECT_EQ(s.revoking_count(), 0);
  EXPECT_TRUE(s.take_revocations().empty());
}

TEST(Revocation, ChoosesTheDeviceWhereFewestLeasesGo) {
  // Device 0 would need two residents revoked, device 1 one.
  Scheduler s = make({8, 8});
  start(s, resident("a", 4, 0), 1 * kSecond);
  start(s, resident("b", 4, 0), 2 * kSecond);
  start(s, resident("c", 4, 1), 3 * kSecond);
  start(s, req("busy", 3, 0, 1, 1));
  EXPECT_TRUE(wait(s, req("w", 5)).empty());
  EXPECT_EQ(revoked(s), (Pairs{{"resident-c", "w"}}));
}

TEST(Revocation, LeastRecentlyUsedResidentFirst) {
  Scheduler s = make({12});
  start(s, resident("a", 4, 0), 1 * kSecond);
  start(s, resident("b", 4, 0), 2 * kSecond);
  start(s, resident("c", 4, 0), 3 * kSecond);
  // "a" is used again: "b" is now the least recently used.
  ASSERT_TRUE(s.touch("resident-a", 4 * kSecond).ok());
  EXPECT_TRUE(wait(s, req("w", 4), 5 * kSecond).empty());
  EXPECT_EQ(revoked(s), (Pairs{{"resident-b", "w"}}));
  EXPECT_EQ(s.touch("resident-b", 6 * kSecond).code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(s.touch("nobody", 6 * kSecond).code(), ErrorCode::kNotFound);
}

TEST(Revocation, ResidentsGoBeforePreemptibleJobs) {
  Scheduler s = make({10});
  start(s, resident("r", 5, 0), 2 * kSecond);  // used more recently than the job started
  start(s, preemptible("job", 5, 0), 1 * kSecond);
  EXPECT_TRUE(wait(s, req("w", 5, 1)).empty());
  EXPECT_EQ(revoked(s), (Pairs{{"resident-r", "w"}}));
}

TEST(Revocation, PreemptibleJobsLowestPriorityFirst) {
  Scheduler s = make({10});
  start(s, preemptible("p1", 5, 0, 1), 1 * kSecond);
  start(s, preemptible("p0", 5, 0, 0), 2 * kSecond);
  EXPECT_TRUE(wait(s, req("w", 5, 2)).empty());
  const auto r = s.take_revocations();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].job_id, "p0");
  EXPECT_EQ(r[0].cause, RevokeCause::kPreempted);
}

TEST(Revocation, PriorityIsRespected) {
  // A resident gives way to waiters of at least its priority.
  {
    Scheduler s = make({10});
    start(s, resident("r", 10, 0, 2));
    EXPECT_TRUE(wait(s, req("low", 5, 1)).empty());
    EXPECT_TRUE(s.take_revocations().empty());
    EXPECT_TRUE(wait(s, req("equal", 5, 2)).empty());
    EXPECT_EQ(revoked(s), (Pairs{{"resident-r", "equal"}}));
  }
  // A preemptible job only to strictly higher priorities.
  {
    Scheduler s = make({10});
    start(s, preemptible("p", 10, 0, 2));
    EXPECT_TRUE(wait(s, req("equal", 5, 2)).empty());
    EXPECT_TRUE(s.take_revocations().empty());
    EXPECT_TRUE(wait(s, req("higher", 5, 3)).empty());
    EXPECT_EQ(revoked(s), (Pairs{{"p", "higher"}}));
  }
}

TEST(Revocation, NothingForAWaiterThatFitsElsewhere) {
  Scheduler s = make({10, 10});
  start(s, resident("r", 10, 0));
  start(s, req("other", 4, 0, 1, 1));
  // Fits on device 1: it starts there, and the resident stays.
  const auto grants = wait(s, req("w", 6));
  ASSERT_EQ(grants.size(), 1u);
  EXPECT_EQ(grants[0].devices, std::vector<int>{1});
  EXPECT_TRUE(s.take_revocations().empty());
  EXPECT_EQ(s.revoking_count(), 0);
}

TEST(Revocation, NothingForAWaiterThatFitsButWaitsForTheQueue) {
  // FIFO: "later" fits on device 1 but waits behind the head, which cannot be helped (it
  // needs more than any revocation frees): nobody is revoked for either.
  Scheduler s = make({10, 10}, 1000, QueuePolicy::kFifo);
  start(s, req("big", 9, 0, 1, 0));
  start(s, req("small", 1, 0, 1, 1));
  start(s, resident("r", 4, 1));
  EXPECT_TRUE(wait(s, req("head", 10)).empty());
  EXPECT_TRUE(wait(s, req("later", 2)).empty());
  EXPECT_TRUE(s.take_revocations().empty());
}

TEST(Revocation, AGangRevokesOnKDevicesAllOrNothing) {
  // Three devices, each full with a resident; a 2-GPU waiter revokes the two least recently
  // used and no third.
  {
    Scheduler s = make({8, 8, 8});
    start(s, resident("a", 8, 0), 3 * kSecond);
    start(s, resident("b", 8, 1), 1 * kSecond);
    start(s, resident("c", 8, 2), 2 * kSecond);
    EXPECT_TRUE(wait(s, req("gang", 6, 0, 2)).empty());
    EXPECT_EQ(revoked(s), (Pairs{{"resident-b", "gang"}, {"resident-c", "gang"}}));
    ASSERT_TRUE(s.release("resident-b", 4 * kSecond).ok());
    EXPECT_TRUE(s.schedule(4 * kSecond).empty());  // one of two devices is free: still waits
    ASSERT_TRUE(s.release("resident-c", 5 * kSecond).ok());
    const auto grants = s.schedule(5 * kSecond);
    ASSERT_EQ(grants.size(), 1u);
    EXPECT_EQ(grants[0].devices, (std::vector<int>{1, 2}));
  }
  // Only one device can be freed: nothing is revoked at all.
  {
    Scheduler s = make({8, 8});
    start(s, resident("a", 8, 0));
    start(s, req("busy", 8, 0, 1, 1));
    EXPECT_TRUE(wait(s, req("gang", 6, 0, 2)).empty());
    EXPECT_TRUE(s.take_revocations().empty());
    EXPECT_EQ(s.revoking_count(), 0);
  }
}

TEST(Revocation, NoSecondRevocationWhileSomeArePending) {
  Scheduler s = make({10});
  start(s, resident("a", 5, 0), 1 * kSecond);
  start(s, resident("b", 5, 0), 2 * kSecond);
  EXPECT_TRUE(wait(s, req("w", 5)).empty());
  EXPECT_EQ(revoked(s), (Pairs{{"resident-a", "w"}}));
  // Further passes (a poll, another arrival that fits nowhere) pick nothing more for "w";
  // the second waiter gets a lease of its own, not "w"'s.
  EXPECT_TRUE(s.schedule(3 * kSecond).empty());
  EXPECT_TRUE(s.take_revocations().empty());
  EXPECT_TRUE(wait(s, req("w2", 5), 3 * kSecond).empty());
  EXPECT_EQ(revoked(s), (Pairs{{"resident-b", "w2"}}));
  EXPECT_TRUE(wait(s, req("w3", 5), 3 * kSecond).empty());
  EXPECT_TRUE(s.take_revocations().empty());  // nothing left to revoke
  EXPECT_EQ(s.revoking_count(), 2);
}

TEST(Revocation, ALeaseRevokedForAWaiterThatLeftServesTheNext) {
  Scheduler s = make({10});
  start(s, resident("a", 5, 0), 1 * kSecond);
  start(s, resident("b", 5, 0), 2 * kSecond);
  EXPECT_TRUE(wait(s, req("w", 5)).empty());
  EXPECT_EQ(revoked(s), (Pairs{{"resident-a", "w"}}));
  ASSERT_TRUE(s.cancel("w").ok());
  // "a" is still being revoked: a new waiter of the same size takes it over instead of
  // revoking "b" as well.
  EXPECT_TRUE(wait(s, req("w2", 5), 3 * kSecond).empty());
  EXPECT_TRUE(s.take_revocations().empty());
  ASSERT_TRUE(s.release("resident-a", 4 * kSecond).ok());
  const auto grants = s.schedule(4 * kSecond);
  ASSERT_EQ(grants.size(), 1u);
  EXPECT_EQ(grants[0].job_id, "w2");
}

TEST(Revocation, AConcurrencySlotIsFreedByRevokingOne) {
  // Memory is plenty, but the one slot is taken by a resident.
  Scheduler s = make({10}, 1);
  start(s, resident("r", 2, 0));
  EXPECT_TRUE(wait(s, req("w", 2)).empty());
  EXPECT_EQ(revoked(s), (Pairs{{"resident-r", "w"}}));
}

TEST(Revocation, ExplicitRevokeChecksItsHolder) {
  Scheduler s = make({10});
  start(s, resident("r", 2, 0));  // uid 1
  start(s, req("plain", 2));
  EXPECT_EQ(s.revoke("r-unknown").status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(s.revoke("resident-r", 7).status().code(), ErrorCode::kPermissionDenied);
  EXPECT_EQ(s.revoking_count(), 0);
  EXPECT_EQ(s.revoke("plain", 1).status().code(), ErrorCode::kFailedPrecondition);
  auto r = s.revoke("resident-r", 1);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_EQ(r->cause, RevokeCause::kResident);
  EXPECT_EQ(s.revoke("resident-r", 0).status().code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(s.revoking_count(), 1);
}

TEST(Revocation, BadRevocableRequestsChangeNothing) {
  Scheduler s = make({10});
  start(s, resident("model", 2, 0));
  LeaseRequest both = resident("x", 1, 0);
  both.preemptible = true;
  EXPECT_EQ(s.try_start(both, Holder{}, 0).status().code(), ErrorCode::kInvalidArgument);
  LeaseRequest control = resident("bad\x1b[31m", 1, 0);
  EXPECT_EQ(s.try_start(control, Holder{}, 0).status().code(), ErrorCode::kInvalidArgument);
  LeaseRequest again = resident("model", 1, 0);
  again.job_id = "another";
  const Status dup = s.try_start(again, Holder{}, 0).status();
  EXPECT_EQ(dup.code(), ErrorCode::kAlreadyExists);
  EXPECT_NE(dup.message().find("already exists"), std::string::npos) << dup.message();
  EXPECT_EQ(s.enqueue(again, Holder{}, 0, std::nullopt).status().code(), ErrorCode::kAlreadyExists);
  for (const double grace : {-1.0, std::nan(""), std::numeric_limits<double>::infinity()}) {
    LeaseRequest g = preemptible("g", 1, 0);
    g.revoke_grace_s = grace;
    EXPECT_EQ(s.try_start(g, Holder{}, 0).status().code(), ErrorCode::kInvalidArgument) << grace;
  }
  EXPECT_EQ(s.active_count(), 1);
  EXPECT_EQ(s.revocable_count(), 1);
  EXPECT_EQ(s.waiting_count(), 0u);
  // Once released, the name is free again.
  ASSERT_TRUE(s.release("resident-model", 0).ok());
  EXPECT_TRUE(s.try_start(again, Holder{}, 0).ok());
}

}  // namespace
}  // namespace gpumgr::core
