// A request confined to some devices (LeaseRequest::allowed_devices, what the Slurm plugin
// asks for a task's allocation): it goes only there, waits for whichever of them has room
// first, is refused with the right error where it can never fit there, and a head confined
// so reserves only among its own devices. Scheduler on a virtual clock; the ledger's pinned
// mode at the end.
#include <gtest/gtest.h>
#include <unistd.h>

#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "core/local_ledger.h"
#include "core/scheduler.h"
#include "gpumgr/backends.h"
#include "gpumgr/units.h"

namespace gpumgr::core {
namespace {

constexpr TimeNs kSecond = 1'000'000'000;

LeaseRequest confined(std::string id, std::uint64_t gib, std::vector<int> allowed, int gpus = 1) {
  LeaseRequest r;
  r.job_id = std::move(id);
  r.bytes = gib * kGiB;
  r.gpus = gpus;
  r.allowed_devices = std::move(allowed);
  return r;
}

Scheduler four_devices(std::vector<std::uint64_t> caps_gib = {40, 10, 10, 10}) {
  Scheduler s(SchedulerConfig{100, PlacementPolicy::kBestFit, QueuePolicy::kBackfill},
              caps_gib.size());
  for (std::size_t i = 0; i < caps_gib.size(); ++i) {
    s.set_device(static_cast<int>(i), caps_gib[i] * kGiB, 0, true);
  }
  return s;
}

std::vector<int> started_on(Scheduler& s, const LeaseRequest& r) {
  auto g = s.try_start(r, Holder{1, 1}, 0);
  EXPECT_TRUE(g.ok()) << g.status().to_string();
  return g.ok() ? g.value()->second.devices : std::vector<int>{};
}

TEST(AllowedDevices, GoesOnlyOnItsDevicesEvenWhereOthersFitBetter) {
  Scheduler s = four_devices({10, 40, 8, 8});
  // Best fit alone would choose device 2 or 3 (8 GiB) for 6 GiB; confined to 0 and 1 it gets
  // the better fit of those two.
  EXPECT_EQ(started_on(s, confined("a", 6, {1, 0})), std::vector<int>{0});
  EXPECT_EQ(started_on(s, confined("b", 6, {0, 1})), std::vector<int>{1});
  // Two GPUs among three allowed: never device 3.
  EXPECT_EQ(started_on(s, confined("gang", 4, {1, 2, 3}, 2)), (std::vector<int>{2, 3}));
  EXPECT_EQ(s.device(0).leased, 6 * kGiB);
}

TEST(AllowedDevices, WaitsForWhicheverOfItsDevicesFreesFirst) {
  for (const int frees : {1, 2}) {
    Scheduler s = four_devices();
    started_on(s, confined("h1", 9, {1}));
    started_on(s, confined("h2", 9, {2}));
    started_on(s, confined("h3", 9, {3}));
    auto queued = s.enqueue(confined("w", 5, {1, 2}), Holder{1, 1}, 0, std::nullopt);
    ASSERT_TRUE(queued.ok());
    EXPECT_TRUE(queued->empty()) << "device 0 has room, but the job may not use it";
    // Room on a device it may not use changes nothing.
    ASSERT_TRUE(s.release("h3", kSecond).ok());
    EXPECT_TRUE(s.schedule(kSecond).empty());
    EXPECT_TRUE(s.is_waiting("w"));
    ASSERT_TRUE(s.release(frees == 1 ? "h1" : "h2", 2 * kSecond).ok());
    const auto grants = s.schedule(2 * kSecond);
    ASSERT_EQ(grants.size(), 1u);
    EXPECT_EQ(grants[0].devices, std::vector<int>{frees});
  }
}

TEST(AllowedDevices, AConfinedHeadReservesOnlyAmongItsDevices) {
  Scheduler s(SchedulerConfig{100, PlacementPolicy::kBestFit, QueuePolicy::kBackfill, 0},
              3);  // reserve_after_holds 0: the head reserves at once
  for (int d = 0; d < 3; ++d) s.set_device(d, 10 * kGiB, 0, true);
  started_on(s, confined("h0", 6, {0}));
  started_on(s, confined("h1", 8, {1}));
  started_on(s, confined("h2", 9, {2}));
  // Device 0 has the smallest shortfall for 8 GiB, but the head may use only 1 and 2.
  ASSERT_TRUE(s.enqueue(confined("head", 8, {1, 2}), Holder{1, 1}, 0, std::nullopt).ok());
  EXPECT_EQ(s.reserved_devices(), std::vector<int>{1});
  // A later job may still backfill device 0, which the head will never use.
  LeaseRequest later;
  later.job_id = "later";
  later.bytes = 4 * kGiB;
  EXPECT_EQ(started_on(s, later), std::vector<int>{0});
}

TEST(AllowedDevices, AConfinedWaiterRevokesOnlyOnItsOwnDevices) {
  Scheduler s = four_devices({10, 10});
  // Both preemptible; the one on device 0 has the lower priority, so that an unconfined
  // waiter would take it first.
  for (const auto& [id, device, priority] : {std::tuple{"p0", 0, -1}, std::tuple{"p1", 1, 0}}) {
    LeaseRequest r = confined(id, 9, {device});
    r.preemptible = true;
    r.priority = priority;
    started_on(s, r);
  }
  LeaseRequest urgent = confined("urgent", 8, {1});
  urgent.priority = 5;
  ASSERT_TRUE(s.enqueue(urgent, Holder{2, 2}, 0, std::nullopt).ok());
  std::vector<std::string> victims;
  for (const Revocation& r : s.take_revocations()) {
    EXPECT_EQ(r.for_job, "urgent");
    victims.push_back(r.job_id);
  }
  EXPECT_EQ(victims, std::vector<std::string>{"p1"});
}

TEST(AllowedDevices, BadSetsAreRefusedWithTheirReason) {
  Scheduler s = four_devices();
  const auto code = [&](const LeaseRequest& r) { return s.check(r).code(); };
  EXPECT_EQ(code(confined("x", 1, {4})), ErrorCode::kNotFound);
  EXPECT_EQ(code(confined("x", 1, {-1})), ErrorCode::kNotFound);
  EXPECT_EQ(code(confined("x", 1, {1, 1})), ErrorCode::kInvalidArgument);
  EXPECT_EQ(code(confined("x", 1, {1}, 2)), ErrorCode::kInvalidArgument);
  LeaseRequest both = confined("x", 1, {1});
  both.device = 1;
  EXPECT_EQ(code(both), ErrorCode::kInvalidArgument);
  // 20 GiB fits device 0 (40 GiB), never devices 1..3 (10 GiB each): it can never fit here.
  const Status never = s.check(confined("x", 20, {1, 2}));
  EXPECT_EQ(never.code(), ErrorCode::kNeverFits);
  EXPECT_NE(never.message().find("devices 1,2"), std::string::npos) << never.message();
  EXPECT_TRUE(s.check(confined("x", 20, {2, 0})).ok());
  // A refusal changes nothing.
  EXPECT_EQ(s.waiting_count(), 0u);
  EXPECT_EQ(s.active_count(), 0);
}

TEST(AllowedDevices, APinnedLedgerServesOnlySetsThatIncludeItsDevice) {
  auto backend =
      std::make_shared<SimulatedBackend>(std::vector<std::uint64_t>{8 * kGiB, 8 * kGiB, 8 * kGiB});
  LedgerConfig config;
  config.memory_limit = 1.0;
  auto ledger = make_local_ledger(backend, config, 1);
  ASSERT_TRUE(ledger.ok()) << ledger.status().to_string();
  auto yes = (*ledger)->try_acquire(confined("yes", 1, {0, 1}));
  ASSERT_TRUE(yes.ok()) << yes.status().to_string();
  EXPECT_EQ(yes->devices, std::vector<int>{1});
  auto no = (*ledger)->try_acquire(confined("no", 1, {0, 2}));
  EXPECT_EQ(no.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(no.status().message().find("pinned to device 1"), std::string::npos);
}

TEST(AllowedDevices, AnInProcessLedgerHoldsLeasesOnlyForItsOwnProcess) {
  auto backend = std::make_shared<SimulatedBackend>(std::vector<std::uint64_t>{8 * kGiB});
  auto ledger = make_local_ledger(backend, LedgerConfig{});
  ASSERT_TRUE(ledger.ok());
  LeaseRequest r = confined("other", 1, {});
  r.holder_pid = 1;
  EXPECT_EQ((*ledger)->try_acquire(r).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ((*ledger)->acquire(r, WaitOptions::for_seconds(0)).status().code(),
            ErrorCode::kInvalidArgument);
  r.holder_pid = static_cast<std::uint32_t>(::getpid());
  auto own = (*ledger)->try_acquire(r);
  ASSERT_TRUE(own.ok()) << own.status().to_string();
  EXPECT_EQ(own->pid, r.holder_pid);
}

}  // namespace
}  // namespace gpumgr::core
