// The queue policies beyond strict FIFO on a virtual clock: greedy (no reservation), and the
// default backfill's two rules, aging (the head is served greedily until it has waited
// SchedulerConfig::reserve_after_holds mean hold times, then reserves) and headroom (a
// reserved device still takes backfills up to what the head will never need there). The
// guarantee of docs/scheduling.md is checked on random workloads: a head that reserves at
// time h starts no later than the last end, among the leases on its reserved devices at h.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <queue>
#include <random>
#include <string>
#include <vector>

#include "core/scheduler.h"
#include "gpumgr/units.h"

namespace gpumgr::core {
namespace {

constexpr TimeNs kSecond = 1'000'000'000;

LeaseRequest req(std::string id, std::uint64_t gib, int gpus = 1) {
  LeaseRequest r;
  r.job_id = std::move(id);
  r.bytes = gib * kGiB;
  r.gpus = gpus;
  return r;
}

Scheduler make(std::vector<std::uint64_t> caps_gib, QueuePolicy queue,
               double reserve_after_holds = SchedulerConfig{}.reserve_after_holds) {
  SchedulerConfig config;
  config.max_concurrent_jobs = 1000;
  config.queue = queue;
  config.reserve_after_holds = reserve_after_holds;
  Scheduler s(config, caps_gib.size());
  for (std::size_t i = 0; i < caps_gib.size(); ++i) {
    s.set_device(static_cast<int>(i), caps_gib[i] * kGiB, 0, true);
  }
  return s;
}

std::vector<std::string> ids(const std::vector<Grant>& grants) {
  std::vector<std::string> out;
  for (const auto& g : grants) out.push_back(g.job_id);
  return out;
}

std::vector<Grant> wait(Scheduler& s, const LeaseRequest& r, TimeNs now) {
  auto g = s.enqueue(r, Holder{1, 1}, now, std::nullopt);
  EXPECT_TRUE(g.ok()) << g.status().to_string();
  return g.ok() ? g.value() : std::vector<Grant>{};
}

TEST(QueuePolicy, NamesParseBothWays) {
  for (const QueuePolicy p : {QueuePolicy::kBackfill, QueuePolicy::kFifo, QueuePolicy::kGreedy}) {
    auto parsed = parse_queue_policy(queue_policy_name(p));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(parsed.value(), p);
  }
  EXPECT_EQ(queue_policy_name(QueuePolicy::kGreedy), "greedy");
  auto bad = parse_queue_policy("lifo");
  EXPECT_EQ(bad.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("'lifo'"), std::string::npos);
}

TEST(QueuePolicy, GreedyStartsWhateverFitsAndCanDelayTheHead) {
  for (const QueuePolicy policy : {QueuePolicy::kGreedy, QueuePolicy::kBackfill}) {
    Scheduler s = make({10, 10}, policy);
    ASSERT_EQ(ids(wait(s, req("a", 6), 0)), std::vector<std::string>{"a"});  // device 0
    ASSERT_EQ(ids(wait(s, req("b", 6), 0)), std::vector<std::string>{"b"});  // device 1
    EXPECT_TRUE(wait(s, req("head", 8), 0).empty());
    // A 3 GiB job fits on either device. Greedy takes the best fit (device 0, the lowest
    // index of a tie); backfill keeps the head's reserved device (0: the first of the
    // tie) for the head and uses device 1.
    auto grants = wait(s, req("small", 3), 0);
    ASSERT_EQ(ids(grants), std::vector<std::string>{"small"}) << queue_policy_name(policy);
    if (policy == QueuePolicy::kGreedy) {
      EXPECT_TRUE(s.reserved_devices().empty());
      EXPECT_EQ(grants[0].devices, std::vector<int>{0});
      // a leaves device 0, but small holds 3 of its 10 GiB: the 8 GiB head still waits.
      ASSERT_TRUE(s.release("a", kSecond).ok());
      EXPECT_TRUE(s.schedule(kSecond).empty());
      EXPECT_TRUE(s.is_waiting("head"));
    } else {
      EXPECT_EQ(s.reserved_devices(), std::vector<int>{0});
      EXPECT_EQ(grants[0].devices, std::vector<int>{1});
      ASSERT_TRUE(s.release("a", kSecond).ok());
      EXPECT_EQ(ids(s.schedule(kSecond)), std::vector<std::string>{"head"});
    }
  }
}

TEST(QueuePolicy, AHeadIsServedGreedilyUntilItHasWaitedTwoMeanHolds) {
  Scheduler s = make({10, 10}, QueuePolicy::kBackfill, 2.0);
  // One lease held for 10 s: the mean hold is 10 s, so the head reserves after 20 s.
  ASSERT_EQ(ids(wait(s, req("warm", 1), 0)).size(), 1u);
  ASSERT_TRUE(s.release("warm", 10 * kSecond).ok());
  const TimeNs t0 = 10 * kSecond;
  ASSERT_EQ(ids(wait(s, req("a", 7), t0)), std::vector<std::string>{"a"});  // device 0
  ASSERT_EQ(ids(wait(s, req("b", 5), t0)), std::vector<std::string>{"b"});  // device 1
  EXPECT_TRUE(wait(s, req("head", 8), t0).empty());
  // Waited 19.999999999 s: still greedy. The 3 GiB job takes device 0 (3 left: the best fit),
  // where the head has the smaller shortfall.
  auto young = wait(s, req("young", 3), t0 + 20 * kSecond - 1);
  ASSERT_EQ(ids(young), std::vector<std::string>{"young"});
  EXPECT_EQ(young[0].devices, std::vector<int>{0});
  EXPECT_TRUE(s.reserved_devices().empty());
  // Waited 20 s: the head reserves device 1 (shortfall 3 against 8 on device 0). A 3 GiB job
  // would fit there now (5 GiB admissible) but only 2 GiB are beyond what the head needs.
  EXPECT_TRUE(wait(s, req("late", 3), t0 + 20 * kSecond).empty());
  EXPECT_EQ(s.reserved_devices(), std::vector<int>{1});
  // A 2 GiB job fits in that headroom and starts; a second one finds the headroom used up.
  auto fits = wait(s, req("fits", 2), t0 + 21 * kSecond);
  ASSERT_EQ(ids(fits), std::vector<std::string>{"fits"});
  EXPECT_EQ(fits[0].devices, std::vector<int>{1});
  EXPECT_TRUE(wait(s, req("over", 2), t0 + 21 * kSecond).empty());
  // b was on device 1 when the head reserved it: its release starts the head there, beside
  // the 2 GiB backfill.
  ASSERT_TRUE(s.release("b", t0 + 30 * kSecond).ok());
  auto grants = s.schedule(t0 + 30 * kSecond);
  ASSERT_FALSE(grants.empty());
  EXPECT_EQ(grants[0].job_id, "head");
  EXPECT_EQ(grants[0].devices, std::vector<int>{1});
  EXPECT_EQ(s.device(1).leased, 10 * kGiB);
}

TEST(QueuePolicy, ZeroAgingReservesAtOnceEvenAfterLongHolds) {
  Scheduler s = make({10, 10}, QueuePolicy::kBackfill, 0.0);
  ASSERT_EQ(ids(wait(s, req("warm", 1), 0)).size(), 1u);
  ASSERT_TRUE(s.release("warm", 100 * kSecond).ok());
  ASSERT_EQ(ids(wait(s, req("a", 7), 100 * kSecond)).size(), 1u);
  ASSERT_EQ(ids(wait(s, req("b", 5), 100 * kSecond)).size(), 1u);
  EXPECT_TRUE(wait(s, req("head", 8), 100 * kSecond).empty());
  EXPECT_EQ(s.reserved_devices(), std::vector<int>{1});
}

// A random single-priority workload through the scheduler on a virtual clock, as
// `gpumgr simulate` drives it: every head that reserves devices at time h starts no later
// than the last end among the leases that were on those devices at h. Returns the number of
// reservations checked.
int check_reserved_heads_start_in_time(std::uint32_t seed, double reserve_after_holds) {
  std::mt19937 rng(seed);
  Scheduler s = make({16, 16, 24, 8}, QueuePolicy::kBackfill, reserve_after_holds);
  std::map<std::string, TimeNs> end_of;  // active leases
  std::priority_queue<std::pair<TimeNs, std::string>, std::vector<std::pair<TimeNs, std::string>>,
                      std::greater<>>
      ends;
  std::map<std::string, TimeNs> duration_of;
  std::string watched;  // the head whose reservation is being checked
  TimeNs deadline = 0;  // when it must have started by
  int checked = 0;
  TimeNs now = 0;
  int next = 0;
  auto granted = [&](const std::vector<Grant>& grants) {
    for (const Grant& g : grants) {
      const TimeNs end = now + duration_of.at(g.job_id);
      end_of[g.job_id] = end;
      ends.emplace(end, g.job_id);
      if (g.job_id == watched) {
        EXPECT_LE(now, deadline) << "head " << watched << " (seed " << seed << ")";
        watched.clear();
      }
    }
    if (!watched.empty() || s.reserved_devices().empty()) return;
    // A new reservation: its bound is the last end among the leases on its devices now.
    watched = s.waiters().front()->request.job_id;
    deadline = now;
    for (const auto& [job_id, lease] : s.active()) {
      for (const int d : lease.devices) {
        const auto& r = s.reserved_devices();
        if (std::find(r.begin(), r.end(), d) != r.end()) {
          deadline = std::max(deadline, end_of.at(job_id));
        }
      }
    }
    ++checked;
  };
  for (int step = 0; step < 4000; ++step) {
    const TimeNs arrival = now + static_cast<TimeNs>(rng() % 3000) * kSecond / 1000;
    if (!ends.empty() && ends.top().first <= arrival) {
      now = ends.top().first;
      const std::string job_id = ends.top().second;
      ends.pop();
      EXPECT_TRUE(s.release(job_id, now).ok());
      end_of.erase(job_id);
      granted(s.schedule(now));
    } else {
      now = arrival;
      const std::string job_id = "j" + std::to_string(next++);
      const int gpus = rng() % 8 == 0 ? 2 : 1;
      duration_of[job_id] = static_cast<TimeNs>(1 + rng() % 20000) * kSecond / 1000;
      granted(wait(s, req(job_id, 1 + rng() % 15, gpus), now));
    }
    if (::testing::Test::HasFailure()) break;
  }
  return checked;
}

TEST(QueuePolicy, AReservedHeadStartsOnceTheLeasesItWaitsForEnd) {
  int checked = 0;
  for (const std::uint32_t seed : {1u, 2u, 3u}) {
    for (const double aging : {0.0, 2.0}) {
      checked += check_reserved_heads_start_in_time(seed, aging);
    }
  }
  EXPECT_GT(checked, 100);  // the workload is busy enough that heads do reserve
}

}  // namespace
}  // namespace gpumgr::core
