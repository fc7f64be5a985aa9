// The scheduler's tenancy rules on a virtual clock: waiting for quota (a waiter beyond its
// user's or group's max_vram or max_jobs waits for that user's own leases to end, passes no
// one and holds no one up), refusals of what can never fit a quota, reloads that lower a
// quota, and fair-share order (users by decayed use within a priority, each user's own
// waiters in arrival order, aging after kAgedHalfLives half-lives). No threads, no sleeps.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <tuple>

#include "core/fair_share.h"
#include "core/quota_book.h"
#include "core/scheduler.h"
#include "core/snapshot_json.h"
#include "gpumgr/units.h"

namespace gpumgr::core {
namespace {

constexpr TimeNs kSecond = 1'000'000'000;

LeaseRequest req(std::string id, std::uint64_t gib, int priority = 0, int gpus = 1) {
  LeaseRequest r;
  r.job_id = std::move(id);
  r.bytes = gib * kGiB;
  r.priority = priority;
  r.gpus = gpus;
  return r;
}

Holder user(std::uint32_t uid) { return Holder{1000 + uid, uid}; }

SchedulerConfig config(bool fair_share = true, TimeNs half_life = 3600 * kSecond) {
  SchedulerConfig c{1000, PlacementPolicy::kBestFit, QueuePolicy::kBackfill};
  c.fair_share = fair_share;
  c.fair_share_half_life = half_life;
  return c;
}

Scheduler make(std::vector<std::uint64_t> caps_gib, SchedulerConfig c = config()) {
  Scheduler s(c, caps_gib.size());
  for (std::size_t i = 0; i < caps_gib.size(); ++i) {
    s.set_device(static_cast<int>(i), caps_gib[i] * kGiB, 0, true);
  }
  return s;
}

QuotaRule rule(std::string scope, std::optional<std::uint64_t> vram_gib,
               std::optional<long long> jobs = std::nullopt) {
  QuotaRule r;
  r.scope = std::move(scope);
  if (vram_gib) r.limits.max_vram_bytes = *vram_gib * kGiB;
  r.limits.max_jobs = jobs;
  return r;
}

QuotaConfig user_quota(std::uint32_t uid, std::optional<std::uint64_t> vram_gib,
                       std::optional<long long> jobs = std::nullopt) {
  QuotaConfig q;
  q.users[uid] = rule("quota.user." + std::to_string(uid), vram_gib, jobs);
  return q;
}

std::vector<std::string> ids(const std::vector<Grant>& grants) {
  std::vector<std::string> out;
  for (const auto& g : grants) out.push_back(g.job_id);
  return out;
}

std::vector<std::string> enqueue(Scheduler& s, const LeaseRequest& r, Holder h, TimeNs now) {
  auto g = s.enqueue(r, h, now, std::nullopt);
  EXPECT_TRUE(g.ok()) << r.job_id << ": " << g.status().to_string();
  return g.ok() ? ids(*g) : std::vector<std::string>{"<error>"};
}

void start(Scheduler& s, const LeaseRequest& r, Holder h, TimeNs now = 0) {
  auto g = s.try_start(r, h, now);
  ASSERT_TRUE(g.ok()) << r.job_id << ": " << g.status().to_string();
}

std::vector<std::string> release(Scheduler& s, std::string_view id, TimeNs now) {
  auto r = s.release(id, now);
  EXPECT_TRUE(r.ok()) << id << ": " << r.status().to_string();
  return ids(s.schedule(now));
}

std::vector<std::string> queue_order(const Scheduler& s) {
  std::vector<std::string> out;
  for (const auto* w : s.waiters()) out.push_back(w->request.job_id);
  return out;
}

using Strings = std::vector<std::string>;

// ---- Waiting for quota ----------------------------------------------------------------

TEST(QuotaWait, AWaiterBeyondItsUsersVramWaitsForItsOwnLeaseWhileOthersStart) {
  Scheduler s = make({80});
  s.set_quotas(user_quota(10, 8), {});
  start(s, req("a-held", 6), user(10));
  // 4 GiB fits the device but not beside the user's 6 GiB under its 8 GiB.
  EXPECT_EQ(enqueue(s, req("a-waits", 4), user(10), 1 * kSecond), Strings{});
  EXPECT_TRUE(s.is_waiting("a-waits"));
  EXPECT_NE(s.quota_wait(*s.waiters().front()).find("holds 6 GiB of its 8 GiB"), std::string::npos)
      << s.quota_wait(*s.waiters().front());
  // Another user, behind it in the queue, starts at once.
  EXPECT_EQ(enqueue(s, req("b", 4), user(20), 2 * kSecond), Strings{"b"});
  // Another user's release does not let it start; its own does.
  EXPECT_EQ(release(s, "b", 3 * kSecond), Strings{});
  EXPECT_EQ(release(s, "a-held", 4 * kSecond), Strings{"a-waits"});
  EXPECT_EQ(s.quotas().usage(10).bytes, 4 * kGiB);
  EXPECT_EQ(s.quotas().usage(10).jobs, 1u);
}

TEST(QuotaWait, AWaiterItsQuotaHoldsRevokesNothingForRoomItCouldNotUse) {
  Scheduler s = make({10});
  LeaseRequest batch = req("batch", 8);
  batch.preemptible = true;
  start(s, batch, user(20));
  s.set_quotas(user_quota(10, 8), {});
  start(s, req("own", 2), user(10));
  // An urgent 7 GiB of uid 10 fits nowhere; revoking the batch job would make room on the
  // device, but uid 10's own 2 GiB leave only 6 of its 8 GiB: it waits for its own lease.
  EXPECT_EQ(enqueue(s, req("urgent", 7, 5), user(10), kSecond), Strings{});
  EXPECT_TRUE(s.take_revocations().empty());
  // Once its own lease ends its quota allows it, and the batch job is revoked for it.
  EXPECT_EQ(release(s, "own", 2 * kSecond), Strings{});
  const auto revoked = s.take_revocations();
  ASSERT_EQ(revoked.size(), 1u);
  EXPECT_EQ(revoked[0].job_id, "batch");
  EXPECT_EQ(revoked[0].for_job, "urgent");
}

TEST(QuotaWait, TryStartBeyondTheQuotaIsRefusedForNowNamingTheQuota) {
  Scheduler s = make({80});
  s.set_quotas(user_quota(10, 8), {});
  start(s, req("a", 6), user(10));
  auto refused = s.try_start(req("b", 4), user(10), 0);
  ASSERT_EQ(refused.status().code(), ErrorCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("quota.user.10.max_vram"), std::string::npos)
      << refused.status().message();
  // Within the quota it starts.
  start(s, req("c", 2), user(10));
}

TEST(QuotaWait, MaxJobsHoldsTheNextJobUntilOneEnds) {
  Scheduler s = make({80});
  s.set_quotas(user_quota(10, std::nullopt, 2), {});
  start(s, req("a1", 1), user(10));
  start(s, req("a2", 1), user(10));
  EXPECT_EQ(enqueue(s, req("a3", 1), user(10), kSecond), Strings{});
  EXPECT_NE(s.quota_wait(*s.waiters().front()).find("runs 2 of its 2 jobs"), std::string::npos);
  EXPECT_EQ(enqueue(s, req("b1", 1), user(20), kSecond), Strings{"b1"});
  EXPECT_EQ(release(s, "a1", 2 * kSecond), Strings{"a3"});
}

TEST(QuotaWait, AHeldWaiterIsNotTheHeadAndReservesNothing) {
  // Two devices of 10 GiB. User 10 (quota 10 GiB) holds 8 GiB on one; its 8 GiB request at
  // priority 5 fits the other device but not its quota. User 20's 9 GiB request at priority
  // 0, behind it, must get that device: the held waiter reserves nothing and heads nothing.
  SchedulerConfig c = config();
  c.reserve_after_holds = 0;  // a head reserves at once
  Scheduler s = make({10, 10}, c);
  s.set_quotas(user_quota(10, 10), {});
  start(s, req("a-held", 8), user(10));
  EXPECT_EQ(enqueue(s, req("a-big", 8, /*priority=*/5), user(10), kSecond), Strings{});
  EXPECT_TRUE(s.reserved_devices().empty());
  EXPECT_EQ(enqueue(s, req("b", 9), user(20), 2 * kSecond), Strings{"b"});
  EXPECT_TRUE(s.is_waiting("a-big"));
  // With no quota at all, the same 8 GiB request would have started on the free device.
  Scheduler free = make({10, 10}, c);
  start(free, req("a-held", 8), user(10));
  EXPECT_EQ(enqueue(free, req("a-big", 8, 5), user(10), kSecond), Strings{"a-big"});
}

TEST(QuotaWait, AUsersLaterWaiterDoesNotTakeTheRoomItsEarlierOneWaitsFor) {
  Scheduler s = make({80});
  s.set_quotas(user_quota(10, 10), {});
  start(s, req("a-held", 6), user(10));
  EXPECT_EQ(enqueue(s, req("a-8", 8), user(10), kSecond), Strings{});
  // 2 GiB would fit beside the 6, but it would keep the earlier 8 GiB waiting longer.
  EXPECT_EQ(enqueue(s, req("a-2", 2), user(10), 2 * kSecond), Strings{});
  EXPECT_NE(s.quota_wait(*s.waiters().back()).find("earlier request of uid 10"), std::string::npos);
  // Once the 6 GiB ends: the 8 GiB starts, and the 2 GiB fits beside it.
  EXPECT_EQ(release(s, "a-held", 3 * kSecond), (Strings{"a-8", "a-2"}));
}

TEST(QuotaWait, AGroupLimitCountsItsMembersTogether) {
  Scheduler s = make({80});
  QuotaConfig q;
  q.groups[500] = rule("quota.group.500", 10);
  const std::map<std::uint32_t, std::vector<std::uint32_t>> members = {{1, {500}}, {2, {7, 500}}};
  s.set_quotas(q, [&](std::uint32_t uid) {
    const auto it = members.find(uid);
    return it == members.end() ? std::vector<std::uint32_t>{} : it->second;
  });
  start(s, req("one", 6), user(1));
  EXPECT_EQ(enqueue(s, req("two", 6), user(2), kSecond), Strings{});  // 12 GiB in group 500
  EXPECT_NE(s.quota_wait(*s.waiters().front()).find("group 500 holds 6 GiB of its 10 GiB"),
            std::string::npos)
      << s.quota_wait(*s.waiters().front());
  EXPECT_EQ(enqueue(s, req("three", 6), user(3), kSecond), Strings{"three"});  // not a member
  EXPECT_EQ(s.quotas().group_usage(500).bytes, 6 * kGiB);
  EXPECT_EQ(release(s, "one", 2 * kSecond), Strings{"two"});
  EXPECT_EQ(s.quotas().group_usage(500).bytes, 6 * kGiB);
  EXPECT_EQ(s.quotas().group_usage(500).jobs, 1u);
}

TEST(QuotaWait, AMultiGpuLeaseCountsItsSizeOnEveryDevice) {
  Scheduler s = make({80, 80});
  s.set_quotas(user_quota(10, 10), {});
  start(s, req("pair", 4, 0, 2), user(10));  // 8 GiB in all
  EXPECT_EQ(s.quotas().usage(10).bytes, 8 * kGiB);
  EXPECT_EQ(enqueue(s, req("more", 3), user(10), kSecond), Strings{});
  EXPECT_EQ(release(s, "pair", 2 * kSecond), Strings{"more"});
}

TEST(QuotaWait, ALoweredQuotaEndsNoLeaseButHoldsNewOnesUntilTheUseIsBelowIt) {
  Scheduler s = make({80});
  s.set_quotas(user_quota(10, 20), {});
  start(s, req("big", 12), user(10));
  EXPECT_EQ(enqueue(s, req("small", 1), user(10), kSecond), Strings{"small"});
  EXPECT_EQ(enqueue(s, req("next", 2), user(10), 2 * kSecond), Strings{"next"});
  // Lowered to 8 GiB while 15 GiB are held: every lease stays.
  EXPECT_TRUE(s.set_quotas(user_quota(10, 8), {}).empty());
  EXPECT_EQ(s.active_count(), 3);
  EXPECT_EQ(enqueue(s, req("later", 1), user(10), 3 * kSecond), Strings{});
  EXPECT_EQ(release(s, "small", 4 * kSecond), Strings{});       // 14 GiB held, still above 8
  EXPECT_EQ(release(s, "big", 5 * kSecond), Strings{"later"});  // 2 + 1 <= 8
}

TEST(QuotaWait, ARaisedQuotaLetsAWaiterStartAtTheNextPass) {
  Scheduler s = make({80});
  s.set_quotas(user_quota(10, 8), {});
  start(s, req("held", 6), user(10));
  EXPECT_EQ(enqueue(s, req("waits", 4), user(10), kSecond), Strings{});
  EXPECT_TRUE(s.set_quotas(user_quota(10, 16), {}).empty());
  EXPECT_EQ(ids(s.schedule(2 * kSecond)), Strings{"waits"});
}

TEST(QuotaRefusal, ARequestThatCanNeverFitItsQuotaIsRefusedAndNotQueued) {
  Scheduler s = make({80, 80});
  QuotaConfig q = user_quota(10, 8, 4);
  q.users[10].limits.max_priority = 3;
  s.set_quotas(q, {});
  auto big = s.enqueue(req("big", 9), user(10), 0, std::nullopt);
  EXPECT_EQ(big.status().code(), ErrorCode::kQuotaExceeded);
  EXPECT_NE(big.status().message().find("can never fit"), std::string::npos);
  auto pair = s.enqueue(req("pair", 5, 0, 2), user(10), 0, std::nullopt);  // 10 GiB in all
  EXPECT_EQ(pair.status().code(), ErrorCode::kQuotaExceeded);
  auto urgent = s.enqueue(req("urgent", 1, 5), user(10), 0, std::nullopt);
  EXPECT_EQ(urgent.status().code(), ErrorCode::kQuotaExceeded);
  EXPECT_EQ(s.waiting_count(), 0u);
  EXPECT_EQ(s.active_count(), 0);
  // Another user has no quota.
  EXPECT_EQ(enqueue(s, req("other", 9), user(20), 0), Strings{"other"});
}

TEST(QuotaRefusal, AReloadDropsTheWaitersThatCanNeverFitTheNewQuotaAndKeepsTheOthers) {
  Scheduler s = make({10});
  start(s, req("blocker", 10), user(30));
  EXPECT_EQ(enqueue(s, req("a-6", 6), user(10), kSecond), Strings{});
  EXPECT_EQ(enqueue(s, req("a-3", 3), user(10), 2 * kSecond), Strings{});
  EXPECT_EQ(enqueue(s, req("b-6", 6), user(20), 3 * kSecond), Strings{});
  const std::vector<Dropped> dropped = s.set_quotas(user_quota(10, 4), {});
  ASSERT_EQ(dropped.size(), 1u);
  EXPECT_EQ(dropped[0].job_id, "a-6");
  EXPECT_EQ(dropped[0].reason.code(), ErrorCode::kQuotaExceeded);
  EXPECT_EQ(queue_order(s), (Strings{"a-3", "b-6"}));
  EXPECT_TRUE(s.find_active("blocker") != nullptr);
}

TEST(QuotaBookTest, AShareIsOfTheHostsCapacityAndTheTightestLimitApplies) {
  Scheduler s = make({40, 40});  // 80 GiB in all
  QuotaConfig q;
  q.users[10].scope = "quota.user.10";
  q.users[10].limits.max_vram_share = 0.25;  // 20 GiB
  q.groups[500] = rule("quota.group.500", 12, 3);
  s.set_quotas(q, [](std::uint32_t uid) {
    return uid == 11 ? std::vector<std::uint32_t>{500} : std::vector<std::uint32_t>{};
  });
  const auto accounts = s.user_accounts(0);
  ASSERT_EQ(accounts.size(), 1u);  // uid 10 has a table of its own
  EXPECT_EQ(accounts[0].max_vram_bytes, 20 * kGiB);
  start(s, req("a", 18), user(10));
  EXPECT_EQ(s.try_start(req("b", 3), user(10), 0).status().code(), ErrorCode::kResourceExhausted);
  start(s, req("g", 12), user(11));
  for (const UserAccount& a : s.user_accounts(kSecond)) {
    if (a.uid != 11) continue;
    EXPECT_EQ(a.max_vram_bytes, 12 * kGiB);
    EXPECT_EQ(a.max_jobs, 3u);
    EXPECT_EQ(a.leased_bytes, 12 * kGiB);
    EXPECT_EQ(a.jobs, 1u);
  }
}

// ---- Fair share -----------------------------------------------------------------------

TEST(FairShareUsage, IntegratesLeasedGibAndHalvesEachHalfLife) {
  constexpr TimeNs kHour = 3600 * kSecond;
  FairShare f(kHour);
  f.start(1, 1.0, 0);
  // One GiB held for one half-life: the integral of e^{-l (T - t)} over [0, T] with
  // l T = ln 2, which is T / (2 ln 2).
  const double after_one = 3600.0 / (2 * std::log(2.0));
  EXPECT_NEAR(f.usage(1, kHour), after_one, 1e-6);
  f.stop(1, 1.0, kHour);
  EXPECT_NEAR(f.usage(1, 2 * kHour), after_one / 2, 1e-6);
  EXPECT_NEAR(f.usage(1, 3 * kHour), after_one / 4, 1e-6);
  EXPECT_EQ(f.usage(2, kHour), 0);
  // A short hold of 10 GiB for 10 s is almost exactly 100 GiB-seconds.
  f.start(3, 10.0, 0);
  f.stop(3, 10.0, 10 * kSecond);
  EXPECT_NEAR(f.usage(3, 10 * kSecond), 100.0, 0.1);
  // A clock that stepped back reads the last figure.
  EXPECT_EQ(f.usage(3, 5 * kSecond), f.usage(3, 10 * kSecond));
}

// A device of 10 GiB that a blocker holds; `heavy` (uid 1) used 10 GiB for 100 s before.
struct Flooded {
  Scheduler s;
  explicit Flooded(SchedulerConfig c = config()) : s(make({10}, c)) {
    start(s, req("heavy-before", 10), user(1), 0);
    EXPECT_TRUE(s.release("heavy-before", 100 * kSecond).ok());
    start(s, req("blocker", 10), user(9), 100 * kSecond);
  }
};

TEST(FairShareOrder, TheLeastUsedUserGoesFirstEachUsersJobsInTheirOrder) {
  Flooded f;
  Scheduler& s = f.s;
  for (const char* id : {"h1", "h2", "h3"}) {
    EXPECT_EQ(enqueue(s, req(id, 10), user(1), 101 * kSecond), Strings{});
  }
  EXPECT_EQ(enqueue(s, req("l1", 10), user(2), 102 * kSecond), Strings{});
  EXPECT_EQ(enqueue(s, req("l2", 10), user(2), 103 * kSecond), Strings{});
  EXPECT_EQ(queue_order(s), (Strings{"l1", "l2", "h1", "h2", "h3"}));
  // One at a time on the device: the light user's two jobs first (its 100 GiB-s after l1
  // are still far below the heavy user's 1000), then the heavy user's.
  EXPECT_EQ(release(s, "blocker", 110 * kSecond), Strings{"l1"});
  EXPECT_EQ(release(s, "l1", 120 * kSecond), Strings{"l2"});
  EXPECT_EQ(release(s, "l2", 130 * kSecond), Strings{"h1"});
  EXPECT_EQ(release(s, "h1", 140 * kSecond), Strings{"h2"});
}

TEST(FairShareOrder, WithoutFairShareTheQueueIsFirstComeFirstServed) {
  Flooded f(config(/*fair_share=*/false));
  Scheduler& s = f.s;
  EXPECT_EQ(enqueue(s, req("h1", 10), user(1), 101 * kSecond), Strings{});
  EXPECT_EQ(enqueue(s, req("l1", 10), user(2), 102 * kSecond), Strings{});
  EXPECT_EQ(queue_order(s), (Strings{"h1", "l1"}));
  EXPECT_EQ(release(s, "blocker", 110 * kSecond), Strings{"h1"});
}

TEST(FairShareOrder, AReloadTurningFairShareOffRestoresArrivalOrder) {
  Flooded f;
  Scheduler& s = f.s;
  EXPECT_EQ(enqueue(s, req("h1", 10), user(1), 101 * kSecond), Strings{});
  EXPECT_EQ(enqueue(s, req("l1", 10), user(2), 102 * kSecond), Strings{});
  EXPECT_EQ(queue_order(s), (Strings{"l1", "h1"}));
  s.set_fair_share(false, 3600 * kSecond, 105 * kSecond);
  EXPECT_EQ(queue_order(s), (Strings{"h1", "l1"}));
  EXPECT_EQ(release(s, "blocker", 110 * kSecond), Strings{"h1"});
}

TEST(FairShareOrder, PriorityStillComesFirst) {
  Flooded f;
  Scheduler& s = f.s;
  EXPECT_EQ(enqueue(s, req("l1", 10), user(2), 101 * kSecond), Strings{});
  EXPECT_EQ(enqueue(s, req("h-urgent", 10, /*priority=*/1), user(1), 102 * kSecond), Strings{});
  EXPECT_EQ(release(s, "blocker", 110 * kSecond), Strings{"h-urgent"});
}

TEST(FairShareOrder, OldUseCountsLessThanRecentUse) {
  // Heavy (uid 1) used 100 GiB-s ending at 100 s; uid 2 used 60 GiB-s ending two half-lives
  // later. Then uid 1's use has decayed to a quarter (25) and it goes first; with a
  // half-life far longer, uid 2's smaller use would put it first.
  constexpr TimeNs kHalf = 1000 * kSecond;
  for (const bool long_memory : {false, true}) {
    Scheduler s = make({10}, config(true, long_memory ? 1000 * kHalf : kHalf));
    start(s, req("old", 10), user(1), 0);
    ASSERT_TRUE(s.release("old", 10 * kSecond).ok());
    const TimeNs t = 10 * kSecond + 2 * kHalf;
    start(s, req("recent", 6), user(2), t - 10 * kSecond);
    ASSERT_TRUE(s.release("recent", t).ok());
    EXPECT_NEAR(s.usage().usage(1, t), long_memory ? 100 : 25, 0.2);
    EXPECT_NEAR(s.usage().usage(2, t), 60, 0.5);
    start(s, req("blocker", 10), user(9), t);
    EXPECT_EQ(enqueue(s, req("u2", 10), user(2), t + kSecond), Strings{});
    EXPECT_EQ(enqueue(s, req("u1", 10), user(1), t + 2 * kSecond), Strings{});
    EXPECT_EQ(release(s, "blocker", t + 3 * kSecond), Strings{long_memory ? "u2" : "u1"})
        << "long memory: " << long_memory;
  }
}

TEST(FairShareOrder, AUserWaitingForAgedHalfLivesGoesByArrival) {
  // Half-life 10 s: after 40 s of waiting the heavy user's earliest waiter is served by
  // arrival, ahead of the light user who arrived later.
  for (const TimeNs at : {30 * kSecond, 45 * kSecond}) {
    Scheduler s = make({10}, config(true, 10 * kSecond));
    start(s, req("before", 10), user(1), 0);
    ASSERT_TRUE(s.release("before", 5 * kSecond).ok());
    start(s, req("blocker", 10), user(9), 5 * kSecond);
    EXPECT_EQ(enqueue(s, req("heavy", 10), user(1), 5 * kSecond), Strings{});
    EXPECT_EQ(enqueue(s, req("light", 10), user(2), 6 * kSecond), Strings{});
    const bool aged = at - 5 * kSecond >= kAgedHalfLives * 10 * kSecond;
    EXPECT_EQ(release(s, "blocker", at), Strings{aged ? "heavy" : "light"}) << at / kSecond;
  }
}

TEST(FairShareOrder, BackfillStillFillsAroundTheFairShareHead) {
  // The light user's 10 GiB waiter is the head; the heavy user's 2 GiB job fits beside what
  // is running on the other device and starts at once (it delays no one).
  Scheduler s = make({10, 10});
  start(s, req("heavy-before", 10), user(1), 0);
  ASSERT_TRUE(s.release("heavy-before", 100 * kSecond).ok());
  start(s, req("blocker0", 10), user(9), 100 * kSecond);
  start(s, req("blocker1", 6), user(9), 100 * kSecond);
  EXPECT_EQ(enqueue(s, req("h-10", 10), user(1), 101 * kSecond), Strings{});
  EXPECT_EQ(enqueue(s, req("l-10", 10), user(2), 102 * kSecond), Strings{});
  EXPECT_EQ(queue_order(s), (Strings{"l-10", "h-10"}));
  EXPECT_EQ(enqueue(s, req("h-2", 2), user(1), 103 * kSecond), Strings{"h-2"});
}

// ---- Status JSON -----------------------------------------------------------------------

TEST(TenantsJson, UsersQuotaWaitsAndFairShareSettingsSurviveTheJsonRoundTrip) {
  Snapshot s;
  s.config.fair_share = false;
  s.config.fair_share_half_life_s = 600;
  WaiterInfo w;
  w.job_id = "w";
  w.quota_wait = "uid 7 runs 2 of its 2 jobs (quota.default.max_jobs)";
  s.queue = {w};
  s.users = {UserUsage{7, 3 * kGiB, 2, 1, 8 * kGiB, 2, 12.5},
             UserUsage{8, 0, 0, 0, std::nullopt, std::nullopt, 0}};
  nlohmann::json j = to_json(s);
  EXPECT_TRUE(j.at("users").at(1).at("max_vram_bytes").is_null());
  auto back = snapshot_from_json(j);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  EXPECT_FALSE(back->config.fair_share);
  EXPECT_EQ(back->config.fair_share_half_life_s, 600);
  ASSERT_EQ(back->queue.size(), 1u);
  EXPECT_EQ(back->queue[0].quota_wait, w.quota_wait);
  ASSERT_EQ(back->users.size(), 2u);
  for (std::size_t i = 0; i < 2; ++i) {
    const UserUsage& a = s.users[i];
    const UserUsage& b = back->users[i];
    EXPECT_EQ(std::tie(a.uid, a.leased_bytes, a.jobs, a.waiting, a.max_vram_bytes, a.max_jobs,
                       a.fair_share_gib_s),
              std::tie(b.uid, b.leased_bytes, b.jobs, b.waiting, b.max_vram_bytes, b.max_jobs,
                       b.fair_share_gib_s));
  }
  // An older daemon's JSON has no users, no quota_wait and no fair-share settings.
  j.erase("users");
  j.at("queue").at(0).erase("quota_wait");
  j.at("config").erase("fair_share");
  j.at("config").erase("fair_share_half_life_s");
  auto old = snapshot_from_json(j);
  ASSERT_TRUE(old.ok()) << old.status().to_string();
  EXPECT_TRUE(old->users.empty());
  EXPECT_EQ(old->queue[0].quota_wait, "");
  EXPECT_TRUE(old->config.fair_share);
}

}  // namespace
}  // namespace gpumgr::core
