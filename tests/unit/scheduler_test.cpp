// The scheduler's rules on a virtual clock: admission, queue order, backfill that never
// delays the head (aging and greedy: queue_policy_test.cpp), FIFO, multi-GPU all-or-nothing,
// placement policies, pinning, health, deadlines and cancellation. No threads and no sleeps:
// every time is passed explicitly.
#include "core/scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <tuple>

#include "core/fit_index.h"
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

// A scheduler over devices with the given capacities (GiB), nothing foreign.
Scheduler make(std::vector<std::uint64_t> caps_gib, QueuePolicy queue = QueuePolicy::kBackfill,
               PlacementPolicy placement = PlacementPolicy::kBestFit, int max_jobs = 1000) {
  Scheduler s(SchedulerConfig{max_jobs, placement, queue}, caps_gib.size());
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

Grant start(Scheduler& s, const LeaseRequest& r, TimeNs now = 0) {
  auto g = s.try_start(r, Holder{1, 1}, now);
  EXPECT_TRUE(g.ok()) << g.status().to_string();
  if (!g.ok()) return Grant{};
  const auto& [job_id, lease] = *g.value();
  EXPECT_EQ(job_id, r.job_id);
  EXPECT_EQ(lease.bytes, r.bytes);
  return Grant{job_id, lease.devices, lease.bytes, lease.requested_at, lease.granted_at};
}

std::vector<Grant> wait(Scheduler& s, const LeaseRequest& r, TimeNs now = 0,
                        std::optional<TimeNs> deadline = std::nullopt) {
  auto g = s.enqueue(r, Holder{1, 1}, now, deadline);
  EXPECT_TRUE(g.ok()) << g.status().to_string();
  return g.ok() ? g.value() : std::vector<Grant>{};
}

TEST(Scheduler, AdmitsExactlyUpToAdmissibleMemory) {
  Scheduler s = make({10});
  s.set_device(0, 10 * kGiB, 3 * kGiB, true);  // 3 GiB used by an outside process
  EXPECT_EQ(s.device(0).admissible(), 7 * kGiB);
  auto too_big = s.try_start(req("a", 8), Holder{}, 0);
  EXPECT_EQ(too_big.status().code(), ErrorCode::kResourceExhausted);
  Grant g = start(s, req("b", 7));
  EXPECT_EQ(g.devices, std::vector<int>{0});
  EXPECT_EQ(s.device(0).admissible(), 0u);
  EXPECT_EQ(s.device(0).leased, 7 * kGiB);
}

TEST(Scheduler, HigherPriorityFirstThenFirstComeFirstServed) {
  Scheduler s = make({10});
  start(s, req("hold", 10));
  EXPECT_TRUE(wait(s, req("b", 5, 0)).empty());
  EXPECT_TRUE(wait(s, req("c", 5, 1)).empty());
  EXPECT_TRUE(wait(s, req("d", 5, 0)).empty());
  ASSERT_TRUE(s.release("hold", kSecond).ok());
  // c outranks b; b came before d; only two 5 GiB jobs fit.
  EXPECT_EQ(ids(s.schedule(kSecond)), (std::vector<std::string>{"c", "b"}));
  EXPECT_TRUE(s.is_waiting("d"));
}

TEST(Scheduler, BackfillUsesOnlyWhatTheHeadWillNeverNeedOnItsReservedDevice) {
  Scheduler s = make({10, 10});
  start(s, req("a", 6));  // best-fit: device 0
  start(s, req("b", 9));  // device 1 (device 0 has only 4 left)
  ASSERT_EQ(s.active().at("b").devices, std::vector<int>{1});
  // Head h needs 7: shortfall 3 on device 0, 6 on device 1: it reserves device 0.
  EXPECT_TRUE(wait(s, req("h", 7)).empty());
  EXPECT_EQ(s.reserved_devices(), std::vector<int>{0});
  // A 1 GiB job would fit on either device: it takes the unreserved device 1.
  EXPECT_EQ(ids(wait(s, req("s", 1))), std::vector<std::string>{"s"});
  EXPECT_EQ(s.active().at("s").devices, std::vector<int>{1});
  // A 4 GiB job fits on device 0 now, but h will need 7 of its 10 GiB: it waits behind h.
  EXPECT_TRUE(wait(s, req("t", 4)).empty());
  // A 3 GiB job fits in the 3 GiB that h will never need there: it starts beside a.
  EXPECT_EQ(ids(wait(s, req("u", 3))), std::vector<std::string>{"u"});
  EXPECT_EQ(s.active().at("u").devices, std::vector<int>{0});
  EXPECT_EQ(s.device(0).leased, 9 * kGiB);
  // Releasing the lease h waited for starts h at once, beside u; t still does not fit.
  ASSERT_TRUE(s.release("a", kSecond).ok());
  EXPECT_EQ(ids(s.schedule(kSecond)), (std::vector<std::string>{"h"}));
  EXPECT_EQ(s.active().at("h").devices, std::vector<int>{0});
  EXPECT_EQ(s.device(0).leased, 10 * kGiB);
  EXPECT_TRUE(s.is_waiting("t"));
}

TEST(Scheduler, FifoStartsNothingWhileAnEarlierJobWaits) {
  Scheduler s = make({10, 10}, QueuePolicy::kFifo);
  start(s, req("a", 8));
  start(s, req("b", 9));
  EXPECT_TRUE(wait(s, req("h", 6)).empty());
  EXPECT_TRUE(wait(s, req("s", 1)).empty());  // would fit, but h is first
  auto direct = s.try_start(req("x", 1), Holder{}, 0);
  EXPECT_EQ(direct.status().code(), ErrorCode::kResourceExhausted);
  ASSERT_TRUE(s.release("a", kSecond).ok());
  EXPECT_EQ(ids(s.schedule(kSecond)), (std::vector<std::string>{"h", "s"}));
}

TEST(Scheduler, AStreamOfSmallJobsNeverDelaysTheHead) {
  Scheduler s = make({10, 10});
  start(s, req("big0", 6));
  start(s, req("big1", 6));  // 4 GiB left on each device
  EXPECT_TRUE(wait(s, req("head", 8)).empty());
  const std::vector<int> reserved = s.reserved_devices();
  ASSERT_EQ(reserved.size(), 1u);
  const int other = 1 - reserved[0];
  // Many small jobs arrive and finish; they only ever land on the unreserved device.
  for (int i = 0; i < 50; ++i) {
    const std::string id = "small" + std::to_string(i);
    auto grants = wait(s, req(id, 1), i * kSecond);
    ASSERT_EQ(ids(grants), std::vector<std::string>{id});
    EXPECT_EQ(grants[0].devices, std::vector<int>{other});
    ASSERT_TRUE(s.release(id, i * kSecond + 1).ok());
    EXPECT_TRUE(s.schedule(i * kSecond + 1).empty());
  }
  EXPECT_EQ(s.device(reserved[0]).leased, 6 * kGiB);  // nothing joined the reserved device
  ASSERT_TRUE(s.release(reserved[0] == 0 ? "big0" : "big1", 100 * kSecond).ok());
  EXPECT_EQ(ids(s.schedule(100 * kSecond)), std::vector<std::string>{"head"});
}

TEST(Scheduler, MultiGpuJobsAreAllOrNothing) {
  Scheduler s = make({10, 10, 10});
  start(s, req("a", 8, 0, 1, 1));
  start(s, req("b", 8, 0, 1, 2));
  // Needs 6 GiB on each of two devices: only device 0 has room, so it holds nothing.
  EXPECT_TRUE(wait(s, req("pair", 6, 0, 2)).empty());
  EXPECT_EQ(s.device(0).leased, 0u);
  ASSERT_TRUE(s.release("b", kSecond).ok());
  auto grants = s.schedule(kSecond);
  ASSERT_EQ(ids(grants), std::vector<std::string>{"pair"});
  EXPECT_EQ(grants[0].devices, (std::vector<int>{0, 2}));
  EXPECT_EQ(s.device(0).leased, 6 * kGiB);
  EXPECT_EQ(s.device(2).leased, 6 * kGiB);
  ASSERT_TRUE(s.release("pair", 2 * kSecond).ok());
  EXPECT_EQ(s.device(0).leased, 0u);
  EXPECT_EQ(s.device(2).leased, 0u);
}

TEST(Scheduler, MultiGpuWaitersBehindTheHeadReserveDevicesToo) {
  Scheduler s = make({10, 10, 10, 10});
  start(s, req("a", 8, 0, 1, 0));
  start(s, req("b", 8, 0, 1, 1));
  start(s, req("c", 3, 0, 1, 2));
  start(s, req("d", 3, 0, 1, 3));
  // head needs 9 GiB on one device (reserves one); the gang needs 9 GiB on two devices and
  // reserves the two with the most admissible memory that are left.
  EXPECT_TRUE(wait(s, req("head", 9)).empty());
  EXPECT_TRUE(wait(s, req("gang", 9, 0, 2)).empty());
  const std::vector<bool> unreserved = s.backfill_devices();
  EXPECT_EQ(std::count(unreserved.begin(), unreserved.end(), true), 1);
  // A 1 GiB job may use only the one device nobody reserved.
  auto grants = wait(s, req("small", 1));
  ASSERT_EQ(ids(grants), std::vector<std::string>{"small"});
  EXPECT_TRUE(unreserved[static_cast<std::size_t>(grants[0].devices[0])]);
}

TEST(Scheduler, PlacementPolicies) {
  // Admissible: 6, 2, 9 GiB. A 2 GiB job: best-fit -> 1, spread -> 2, first-fit -> 0.
  for (auto [policy, expected] :
       std::vector<std::pair<PlacementPolicy, int>>{{PlacementPolicy::kBestFit, 1},
                                                    {PlacementPolicy::kSpread, 2},
                                                    {PlacementPolicy::kFirstFit, 0}}) {
    Scheduler s = make({10, 10, 10}, QueuePolicy::kBackfill, policy);
    s.set_device(0, 10 * kGiB, 4 * kGiB, true);
    s.set_device(1, 10 * kGiB, 8 * kGiB, true);
    s.set_device(2, 10 * kGiB, 1 * kGiB, true);
    EXPECT_EQ(start(s, req("j", 2)).devices, std::vector<int>{expected})
        << placement_policy_name(policy);
  }
}

TEST(Scheduler, PinnedJobsUseOnlyTheirDevice) {
  Scheduler s = make({10, 10});
  EXPECT_EQ(start(s, req("p", 4, 0, 1, 1)).devices, std::vector<int>{1});
  start(s, req("fill", 6, 0, 1, 1));
  EXPECT_TRUE(wait(s, req("q", 1, 0, 1, 1)).empty());  // device 0 is empty but not allowed
  ASSERT_TRUE(s.release("p", 1).ok());
  auto grants = s.schedule(1);
  ASSERT_EQ(ids(grants), std::vector<std::string>{"q"});
  EXPECT_EQ(grants[0].devices, std::vector<int>{1});
}

TEST(Scheduler, UnhealthyDevicesAreNeverChosenAndReturnOnRecovery) {
  Scheduler s = make({10, 10});
  s.set_device(0, 10 * kGiB, 0, false);
  EXPECT_EQ(start(s, req("a", 9)).devices, std::vector<int>{1});
  EXPECT_TRUE(wait(s, req("b", 5)).empty());  // device 0 has room but is lost
  EXPECT_TRUE(s.schedule(1).empty());         // a spurious pass changes nothing
  s.set_device(0, 10 * kGiB, 0, true);
  auto grants = s.schedule(2);
  ASSERT_EQ(ids(grants), std::vector<std::string>{"b"});
  EXPECT_EQ(grants[0].devices, std::vector<int>{0});
}

TEST(Scheduler, RequestsThatCanNeverFitFailAtOnce) {
  Scheduler s = make({10, 5});
  EXPECT_EQ(s.check(req("a", 11)).code(), ErrorCode::kNeverFits);
  EXPECT_EQ(s.check(req("b", 6, 0, 2)).code(), ErrorCode::kNeverFits);  // 2nd largest is 5
  EXPECT_EQ(s.check(req("c", 6, 0, 1, 1)).code(), ErrorCode::kNeverFits);
  EXPECT_TRUE(s.check(req("d", 5, 0, 2)).ok());
  EXPECT_EQ(s.enqueue(req("e", 11), Holder{}, 0, std::nullopt).status().code(),
            ErrorCode::kNeverFits);
  EXPECT_EQ(s.waiting_count(), 0u);
  // Even an unhealthy large device counts: it may recover, so waiting can help.
  s.set_device(0, 10 * kGiB, 0, false);
  EXPECT_TRUE(s.check(req("f", 8)).ok());
}

TEST(Scheduler, BadRequestsChangeNothing) {
  Scheduler s = make({10, 10});
  start(s, req("dup", 1));
  const struct {
    LeaseRequest request;
    ErrorCode code;
  } cases[] = {
      {req("", 1), ErrorCode::kInvalidArgument},
      {req("zero", 0), ErrorCode::kInvalidArgument},
      {req("gpus0", 1, 0, 0), ErrorCode::kInvalidArgument},
      {req("gpus3", 1, 0, 3), ErrorCode::kInvalidArgument},
      {req("dev9", 1, 0, 1, 9), ErrorCode::kNotFound},
      {req("devneg", 1, 0, 1, -2), ErrorCode::kNotFound},
      {req("pin2", 1, 0, 2, 0), ErrorCode::kInvalidArgument},
      {req("dup", 1), ErrorCode::kAlreadyExists},
      {req(std::string("ctl\x01"), 1), ErrorCode::kInvalidArgument},
      {req(std::string(300, 'x'), 1), ErrorCode::kInvalidArgument},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(s.enqueue(c.request, Holder{}, 0, std::nullopt).status().code(), c.code)
        << c.request.job_id;
    EXPECT_EQ(s.try_start(c.request, Holder{}, 0).status().code(), c.code) << c.request.job_id;
  }
  EXPECT_EQ(s.active_count(), 1);
  EXPECT_EQ(s.waiting_count(), 0u);
  EXPECT_EQ(s.device(0).leased + s.device(1).leased, 1 * kGiB);
  EXPECT_EQ(s.release("nope", 0).status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(s.cancel("nope").code(), ErrorCode::kNotFound);
}

TEST(Scheduler, DeadlinesExpireInOrder) {
  Scheduler s = make({10});
  start(s, req("hold", 10));
  wait(s, req("late", 1), 0, 5 * kSecond);
  wait(s, req("early", 1), 0, 2 * kSecond);
  wait(s, req("forever", 1), 0);
  EXPECT_EQ(s.next_deadline(), 2 * kSecond);
  EXPECT_TRUE(s.expire(2 * kSecond - 1).empty());
  auto dropped = s.expire(2 * kSecond);
  ASSERT_EQ(dropped.size(), 1u);
  EXPECT_EQ(dropped[0].job_id, "early");
  EXPECT_EQ(dropped[0].reason.code(), ErrorCode::kTimedOut);
  EXPECT_EQ(s.next_deadline(), 5 * kSecond);
  dropped = s.expire(100 * kSecond);
  ASSERT_EQ(dropped.size(), 1u);
  EXPECT_EQ(dropped[0].job_id, "late");
  EXPECT_FALSE(s.next_deadline().has_value());
  EXPECT_TRUE(s.is_waiting("forever"));
}

TEST(Scheduler, AWaiterIsKeptUntilTheNanosecondOfItsDeadlineAndDroppedAtIt) {
  // Requested at t0 with a 1.5 s timeout: the deadline is t0 + 1.5 s, to the nanosecond.
  // expire(D - 1) keeps it (and everyone else); expire(D) drops it with the time it waited;
  // a waiter of higher priority and one with a later deadline stay.
  constexpr TimeNs t0 = 7 * kSecond + 3;
  constexpr TimeNs kTimeout = 1'500'000'000;
  constexpr TimeNs D = t0 + kTimeout;
  Scheduler s = make({10});
  start(s, req("hold", 10), t0);
  wait(s, req("first", 1, 5), t0);  // higher priority, no deadline: the head
  wait(s, req("timed", 1), t0, D);
  wait(s, req("later", 1), t0, D + kSecond);
  EXPECT_EQ(s.next_deadline(), D);
  EXPECT_TRUE(s.expire(t0).empty());
  EXPECT_TRUE(s.expire(D - 1).empty());
  EXPECT_EQ(s.waiting_count(), 3u);
  EXPECT_TRUE(s.is_waiting("timed"));
  EXPECT_EQ(s.next_deadline(), D);  // still due at D, not moved by an early expire()

  auto dropped = s.expire(D);
  ASSERT_EQ(dropped.size(), 1u);
  EXPECT_EQ(dropped[0].job_id, "timed");
  EXPECT_EQ(dropped[0].reason.code(), ErrorCode::kTimedOut);
  // The wait it reports is the timeout, not more.
  EXPECT_NE(dropped[0].reason.message().find("waiting 1.5"), std::string::npos)
      << dropped[0].reason.message();
  EXPECT_FALSE(s.is_waiting("timed"));
  EXPECT_TRUE(s.is_waiting("first"));
  EXPECT_TRUE(s.is_waiting("later"));
  EXPECT_EQ(s.next_deadline(), D + kSecond);
  EXPECT_TRUE(s.expire(D).empty());  // dropped once
  EXPECT_TRUE(s.expire(D + kSecond - 1).empty());
  EXPECT_EQ(s.expire(D + kSecond).size(), 1u);
  // The expired waiter is never granted: the release serves the head only.
  ASSERT_TRUE(s.release("hold", D + kSecond).ok());
  EXPECT_EQ(ids(s.schedule(D + kSecond)), std::vector<std::string>{"first"});
}

TEST(Scheduler, AWaiterGrantedBeforeItsDeadlineNeverExpires) {
  constexpr TimeNs D = 3 * kSecond;
  Scheduler s = make({10});
  start(s, req("hold", 10));
  wait(s, req("w", 4), 0, D);
  ASSERT_TRUE(s.release("hold", D - 1).ok());
  EXPECT_EQ(ids(s.schedule(D - 1)), std::vector<std::string>{"w"});
  EXPECT_FALSE(s.next_deadline().has_value());
  EXPECT_TRUE(s.expire(D).empty());
  EXPECT_EQ(s.active().count("w"), 1u);
}

TEST(Scheduler, CancellingTheHeadLetsTheNextJobUseItsReservation) {
  Scheduler s = make({10, 10});
  start(s, req("a", 6));
  start(s, req("b", 9));
  wait(s, req("h", 7));  // reserves device 0, of which it will never need 3 GiB
  wait(s, req("t", 4));  // fits only on device 0, beyond those 3 GiB
  EXPECT_TRUE(s.is_waiting("t"));
  ASSERT_TRUE(s.cancel("h").ok());
  EXPECT_FALSE(s.is_waiting("h"));
  EXPECT_EQ(ids(s.schedule(1)), std::vector<std::string>{"t"});
  EXPECT_EQ(s.active().at("t").devices, std::vector<int>{0});
}

TEST(Scheduler, ConcurrencyLimitHoldsEvenWithMemoryFree) {
  Scheduler s = make({100}, QueuePolicy::kBackfill, PlacementPolicy::kBestFit, 2);
  start(s, req("a", 1));
  start(s, req("b", 1));
  EXPECT_EQ(s.try_start(req("c", 1), Holder{}, 0).status().code(), ErrorCode::kResourceExhausted);
  EXPECT_TRUE(wait(s, req("c", 1)).empty());
  ASSERT_TRUE(s.release("a", 1).ok());
  EXPECT_EQ(ids(s.schedule(1)), std::vector<std::string>{"c"});
  EXPECT_EQ(s.active_count(), 2);
}

TEST(Scheduler, DirectStartsRespectTheHeadsReservation) {
  Scheduler s = make({10, 10});
  start(s, req("a", 6));
  start(s, req("b", 9));
  wait(s, req("h", 7));  // reserves device 0 (4 GiB admissible, 3 beyond h's request)
  EXPECT_EQ(s.try_start(req("x", 4), Holder{}, 0).status().code(), ErrorCode::kResourceExhausted);
  EXPECT_EQ(start(s, req("y", 1)).devices, std::vector<int>{1});
  EXPECT_EQ(start(s, req("z", 3)).devices, std::vector<int>{0});  // in what h never needs
  EXPECT_EQ(s.try_start(req("w", 1), Holder{}, 0).status().code(), ErrorCode::kResourceExhausted);
  // A job that outranks the head would be the head: it may take device 0's last GiB.
  EXPECT_EQ(start(s, req("vip", 1, 5)).devices, std::vector<int>{0});
}

TEST(Scheduler, OnlyTheHoldersUidOrRootMayRelease) {
  Scheduler s = make({10});
  ASSERT_TRUE(s.try_start(req("a", 4), Holder{100, 1000}, 0).ok());
  auto denied = s.release("a", kSecond, 1001);
  EXPECT_EQ(denied.status().code(), ErrorCode::kPermissionDenied);
  EXPECT_NE(denied.status().message().find("held by uid 1000"), std::string::npos);
  ASSERT_NE(s.find_active("a"), nullptr);  // nothing changed
  EXPECT_EQ(s.device(0).leased, 4 * kGiB);
  auto by_holder = s.release("a", kSecond, 1000);
  ASSERT_TRUE(by_holder.ok());
  EXPECT_EQ(by_holder->held_ns, kSecond);
  EXPECT_EQ(by_holder->holder.pid, 100u);
  ASSERT_TRUE(s.try_start(req("b", 4), Holder{100, 1000}, 0).ok());
  EXPECT_TRUE(s.release("b", kSecond, 0).ok());  // root
  ASSERT_TRUE(s.try_start(req("c", 4), Holder{100, 1000}, 0).ok());
  EXPECT_TRUE(s.release("c", kSecond).ok());  // no requester: the in-process caller
  EXPECT_EQ(s.device(0).leased, 0u);
}

TEST(Scheduler, ReusedEntriesHoldOnlyTheNewDevices) {
  Scheduler s = make({10, 10, 10, 10}, QueuePolicy::kBackfill, PlacementPolicy::kFirstFit);
  ASSERT_TRUE(s.try_start(req("pair", 2, 0, 2), Holder{}, 0).ok());  // devices 0 and 1
  auto released = s.release("pair", 1);
  ASSERT_TRUE(released.ok());
  EXPECT_EQ(std::vector<int>(released->devices.begin(), released->devices.end()),
            (std::vector<int>{0, 1}));
  EXPECT_EQ(released->bytes, 2 * kGiB);
  EXPECT_EQ(released->held_ns, 1);
  // The next grant reuses the released entry, and its two-device list.
  auto one = s.try_start(req("one", 2, 0, 1, 3), Holder{}, 2);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one.value()->second.devices, (std::vector<int>{3}));
  ASSERT_TRUE(s.try_start(req("x", 9), Holder{}, 2).ok());  // a new entry: device 0
  EXPECT_EQ(s.find_active("x")->second.devices, (std::vector<int>{0}));
  EXPECT_EQ(s.find_active("one")->second.devices, (std::vector<int>{3}));
  EXPECT_EQ(s.device(1).leased, 0u);
}

TEST(Scheduler, ManyReleasesKeepOnlyABoundedNumberOfEntriesAndLoseNoLease) {
  // More releases than entries are kept (64), in a random order, and grants in between.
  Scheduler s = make({1000, 1000});
  std::mt19937 rng(7);
  std::vector<std::string> active;
  for (int i = 0; i < 300; ++i) {
    const std::string id = "job-" + std::to_string(i);
    start(s, req(id, 1 + i % 3, 0, 1 + i % 2));
    active.push_back(id);
  }
  std::shuffle(active.begin(), active.end(), rng);
  for (std::size_t i = 0; i < active.size(); ++i) {
    ASSERT_TRUE(s.release(active[i], 1).ok()) << active[i];
    if (i % 3 == 0) start(s, req("again-" + std::to_string(i), 1));
  }
  std::uint64_t expected = 0;
  for (const auto& [id, lease] : s.active()) {
    EXPECT_EQ(id.rfind("again-", 0), 0u) << id;
    EXPECT_EQ(lease.devices.size(), 1u) << id;
    expected += lease.bytes;
  }
  EXPECT_EQ(s.active_count(), 100);
  EXPECT_EQ(s.device(0).leased + s.device(1).leased, expected);
}

TEST(Scheduler, ADuplicateIdIsReportedFirstWhateverElseWouldFail) {
  // try_start finds duplicates by its insertion, after placement; the paths that fail
  // before it must still name the duplicate, as check() does.
  Scheduler s = make({10}, QueuePolicy::kFifo, PlacementPolicy::kBestFit, /*max_jobs=*/2);
  start(s, req("a", 8));
  EXPECT_EQ(s.try_start(req("a", 5), Holder{}, 0).status().code(), ErrorCode::kAlreadyExists);
  EXPECT_EQ(s.try_start(req("c", 5), Holder{}, 0).status().code(),
            ErrorCode::kResourceExhausted);  // does not fit
  start(s, req("b", 1));                     // the limit of 2 is reached
  EXPECT_EQ(s.try_start(req("a", 1), Holder{}, 0).status().code(), ErrorCode::kAlreadyExists);
  EXPECT_EQ(s.try_start(req("c", 1), Holder{}, 0).status().code(), ErrorCode::kResourceExhausted);
  ASSERT_TRUE(s.release("b", 1).ok());
  EXPECT_TRUE(wait(s, req("w", 5), 1).empty());  // waits: a FIFO queue now holds it
  EXPECT_EQ(s.try_start(req("w", 1), Holder{}, 1).status().code(), ErrorCode::kAlreadyExists);
  EXPECT_EQ(s.try_start(req("a", 1), Holder{}, 1).status().code(), ErrorCode::kAlreadyExists);
  EXPECT_EQ(s.try_start(req("c", 1), Holder{}, 1).status().code(),
            ErrorCode::kResourceExhausted);  // FIFO: "w" is ahead
  EXPECT_EQ(s.active_count(), 1);
  EXPECT_EQ(s.device(0).leased, 8 * kGiB);
  EXPECT_EQ(s.waiting_count(), 1u);
}

TEST(Scheduler, AReusedEntryKeepsNothingOfItsLastLease) {
  Scheduler s = make({10, 10});
  LeaseRequest first = req("a-job-id-longer-than-any-short-string-buffer", 3, 5, 1, 1);
  first.command = "python serve.py";
  ASSERT_TRUE(s.try_start(first, Holder{7, 8}, 10).ok());
  ASSERT_TRUE(s.release(first.job_id, 20).ok());
  // The next grant reuses the released entry; a duplicate attempt in between must leave the
  // spare entry usable.
  start(s, req("b", 1));
  EXPECT_EQ(s.try_start(req("b", 1), Holder{}, 30).status().code(), ErrorCode::kAlreadyExists);
  const auto c = s.try_start(req("c", 2), Holder{1, 2}, 40);
  ASSERT_TRUE(c.ok());
  const auto& [job_id, lease] = *c.value();
  EXPECT_EQ(job_id, "c");
  EXPECT_EQ(lease.command, "");
  EXPECT_EQ(lease.priority, 0);
  EXPECT_EQ(lease.holder.pid, 1u);
  EXPECT_EQ(lease.holder.uid, 2u);
  EXPECT_EQ(lease.bytes, 2 * kGiB);
  EXPECT_EQ(lease.requested_at, 40);
  EXPECT_EQ(lease.granted_at, 40);
  EXPECT_EQ(lease.lease_id, 3u);  // a = 1, b = 2
  EXPECT_EQ(s.find_active(first.job_id), nullptr);
  ASSERT_NE(s.find_active("b"), nullptr);
  EXPECT_EQ(s.active_count(), 2);
  EXPECT_EQ(s.device(0).leased + s.device(1).leased, 3 * kGiB);
}

TEST(Scheduler, JobIdsWithAControlCharacterAnywhereAreRefused) {
  // Every length up to 20 (whole words of 8 bytes and every tail), every position.
  Scheduler s = make({10});
  for (std::size_t length = 1; length <= 20; ++length) {
    for (std::size_t pos = 0; pos < length; ++pos) {
      for (const int c : {0x00, 0x01, 0x09, 0x0a, 0x1f, 0x7f}) {
        std::string id(length, 'a');
        id[pos] = static_cast<char>(c);
        EXPECT_EQ(s.check_fields(req(id, 1)).code(), ErrorCode::kInvalidArgument)
            << "length " << length << ", byte " << c << " at " << pos;
      }
      for (const int c : {0x20, 0x21, 0x7e, 0x80, 0x9f, 0xc3, 0xfe, 0xff}) {
        std::string id(length, 'a');
        id[pos] = static_cast<char>(c);
        EXPECT_TRUE(s.check_fields(req(id, 1)).ok())
            << "length " << length << ", byte " << c << " at " << pos;
      }
    }
  }
  EXPECT_TRUE(s.check_fields(req("gen-Ã©tÃ©-æ¥æ¬", 1)).ok());
}

TEST(Scheduler, PlacementTiesGoToTheLowestIndex) {
  for (auto [policy, first, second] : std::vector<std::tuple<PlacementPolicy, int, int>>{
           {PlacementPolicy::kBestFit, 0, 0},  // then device 0 has the least room that fits
           {PlacementPolicy::kSpread, 0, 1},   // then devices 1 and 2 tie for the most
           {PlacementPolicy::kFirstFit, 0, 0}}) {
    Scheduler s = make({10, 10, 10}, QueuePolicy::kBackfill, policy);
    EXPECT_EQ(start(s, req("a", 2)).devices, std::vector<int>{first})
        << placement_policy_name(policy);
    EXPECT_EQ(start(s, req("b", 2)).devices, std::vector<int>{second})
        << placement_policy_name(policy);
  }
}

TEST(Scheduler, PeakLeasedIsTracked) {
  Scheduler s = make({10});
  start(s, req("a", 3));
  start(s, req("b", 4));
  ASSERT_TRUE(s.release("a", 1).ok());
  start(s, req("c", 1));
  EXPECT_EQ(s.device(0).leased, 5 * kGiB);
  EXPECT_EQ(s.device(0).peak_leased, 7 * kGiB);
}

// After every pass the queue is "settled": the head cannot start anywhere, no multi-GPU
// waiter can start on devices no earlier waiter reserved, and no other waiter fits on the
// devices nobody reserved (under FIFO: the head cannot start). Leases never exceed capacity
// (outside use may grow after a grant, so leased + foreign may). Checked against a
// brute-force reading of the state.
void expect_settled(const Scheduler& s) {
  for (std::size_t d = 0; d < s.device_count(); ++d) {
    const auto& dev = s.device(static_cast<int>(d));
    EXPECT_LE(dev.leased, dev.capacity) << "device " << d;
  }
  if (s.waiting_count() == 0 || s.active_count() >= s.config().max_concurrent_jobs) return;
  auto fits = [&](const LeaseRequest& r, const std::vector<bool>& allowed) {
    int n = 0;
    for (std::size_t d = 0; d < s.device_count(); ++d) {
      const int di = static_cast<int>(d);
      if (r.device >= 0 && r.device != di) continue;
      const auto& dev = s.device(di);
      if (allowed[d] && dev.healthy && dev.admissible() >= r.bytes) ++n;
    }
    return n >= r.gpus;
  };
  const auto waiters = s.waiters();
  EXPECT_FALSE(fits(waiters[0]->request, std::vector<bool>(s.device_count(), true)))
      << "head " << waiters[0]->request.job_id;
  if (s.config().queue == QueuePolicy::kFifo) return;
  bool gang_can_start = true;
  const std::vector<bool> unreserved = s.backfill_devices(&gang_can_start);
  EXPECT_FALSE(gang_can_start);
  for (const int d : s.reserved_devices()) EXPECT_FALSE(unreserved[static_cast<std::size_t>(d)]);
  for (std::size_t i = 1; i < waiters.size(); ++i) {
    EXPECT_FALSE(fits(waiters[i]->request, unreserved)) << "waiter " << waiters[i]->request.job_id;
  }
}

TEST(Scheduler, RandomOperationsKeepTheQueueSettled) {
  for (const QueuePolicy policy :
       {QueuePolicy::kBackfill, QueuePolicy::kFifo, QueuePolicy::kGreedy}) {
    std::mt19937 rng(42);
    Scheduler s = make({16, 16, 24, 8}, policy, PlacementPolicy::kBestFit, 6);
    std::vector<std::string> active;
    int next = 0;
    for (int step = 0; step < 3000; ++step) {
      const TimeNs now = step * kSecond;
      const int op = static_cast<int>(rng() % 10);
      if (op < 5) {
        LeaseRequest r = req("j" + std::to_string(next++), 1 + rng() % 12,
                             static_cast<int>(rng() % 3), 1 + static_cast<int>(rng() % 6 == 0));
        if (rng() % 8 == 0) r.device = static_cast<int>(rng() % 4), r.gpus = 1;
        if (!s.check(r).ok()) continue;
        for (const auto& g : wait(s, r, now)) active.push_back(g.job_id);
      } else if (op < 9 && !active.empty()) {
        const std::size_t k = rng() % active.size();
        ASSERT_TRUE(s.release(active[k], now).ok());
        active.erase(active.begin() + static_cast<std::ptrdiff_t>(k));
        for (const auto& g : s.schedule(now)) active.push_back(g.job_id);
      } else {
        const int d = static_cast<int>(rng() % 4);
        const auto& dev = s.device(d);
        s.set_device(d, dev.capacity, (rng() % 4) * kGiB, rng() % 5 != 0);
        for (const auto& g : s.schedule(now)) active.push_back(g.job_id);
      }
      expect_settled(s);
      ASSERT_EQ(static_cast<std::size_t>(s.active_count()), active.size());
      if (HasFailure()) return;
    }
  }
}

TEST(FitIndex, FindsTheEarliestEntryAtMostALimitLikeAScan) {
  std::mt19937 rng(7);
  FitIndex index;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> model;  // (seq, bytes) in order
  std::uint64_t seq = 0;
  for (int step = 0; step < 20000; ++step) {
    if (model.empty() || rng() % 3 != 0) {
      const std::uint64_t bytes = 1 + rng() % 1000;
      index.push_back(seq, bytes);
      model.emplace_back(seq++, bytes);
    } else {
      const std::size_t k = rng() % model.size();
      ASSERT_TRUE(index.erase(model[k].first));
      model.erase(model.begin() + static_cast<std::ptrdiff_t>(k));
    }
    const std::uint64_t limit = rng() % 1000;
    std::optional<std::uint64_t> expected;
    for (const auto& [s, b] : model) {
      if (b <= limit) {
        expected = s;
        break;
      }
    }
    ASSERT_EQ(index.first_at_most(limit), expected) << "step " << step;
    ASSERT_EQ(index.size(), model.size());
  }
  EXPECT_FALSE(index.erase(seq + 1));
}

}  // namespace
}  // namespace gpumgr::core
