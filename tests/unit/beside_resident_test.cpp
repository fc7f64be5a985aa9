// A request beside a resident (LeaseRequest::beside_resident; docs/scheduling.md,
// "Revocable leases"), on a virtual clock: it is confined to the resident's devices, never
// has that resident revoked for it (other residents there still may be), touches it when it
// is granted, and bad names or placements are errors that change nothing.
#include <gtest/gtest.h>

#include <algorithm>

#include "core/scheduler.h"
#include "gpumgr/units.h"

namespace gpumgr::core {
namespace {

constexpr TimeNs kSecond = 1'000'000'000;

LeaseRequest req(std::string id, std::uint64_t gib, int device = -1) {
  LeaseRequest r;
  r.job_id = std::move(id);
  r.bytes = gib * kGiB;
  r.device = device;
  return r;
}
LeaseRequest resident(std::string name, std::uint64_t gib, int device) {
  LeaseRequest r = req("resident-" + name, gib, device);
  r.resident = std::move(name);
  return r;
}
LeaseRequest beside(std::string id, std::uint64_t gib, std::string model) {
  LeaseRequest r = req(std::move(id), gib);
  r.beside_resident = std::move(model);
  return r;
}

Scheduler make(std::vector<std::uint64_t> caps_gib) {
  Scheduler s(SchedulerConfig{1000, PlacementPolicy::kBestFit, QueuePolicy::kBackfill},
              caps_gib.size());
  for (std::size_t i = 0; i < caps_gib.size(); ++i) {
    s.set_device(static_cast<int>(i), caps_gib[i] * kGiB, 0, true);
  }
  return s;
}

void start(Scheduler& s, const LeaseRequest& r, TimeNs now = 0) {
  auto g = s.try_start(r, Holder{1, 1}, now);
  ASSERT_TRUE(g.ok()) << r.job_id << ": " << g.status().to_string();
}

std::vector<std::string> revoked(Scheduler& s) {
  std::vector<std::string> out;
  for (const Revocation& r : s.take_revocations()) out.push_back(r.job_id);
  std::sort(out.begin(), out.end());
  return out;
}

TimeNs last_used(const Scheduler& s, std::string_view job) {
  const ActiveEntry* e = s.find_active(job);
  return e == nullptr ? -1 : e->second.last_used;
}

// The leases running beside resident lease `job` now, or -1 for no such lease.
int users(const Scheduler& s, std::string_view job) {
  const ActiveEntry* e = s.find_active(job);
  return e == nullptr ? -1 : e->second.users;
}

TEST(BesideResident, NeverRevokesItsOwnModelButAnOlderOneThere) {
  // Device 0 (16 GiB): residents "m" and "n", "m" the least recently used; device 1 is
  // empty and larger, so that a job confined to nothing would go there. The worker's job
  // runs beside "m": it must wait on device 0, and least recently used first alone would
  // revoke "m", the very model it runs on.
  Scheduler s = make({16, 40});
  start(s, resident("m", 6, 0), 1 * kSecond);
  start(s, resident("n", 6, 0), 2 * kSecond);
  ASSERT_TRUE(s.touch("resident-n", 3 * kSecond).ok());  // "m" is the least recently used
  start(s, req("other", 3, 0), 3 * kSecond);             // 1 GiB free on device 0
  auto g = s.enqueue(beside("job", 6, "m"), Holder{2, 2}, 4 * kSecond, std::nullopt);
  ASSERT_TRUE(g.ok()) << g.status().to_string();
  EXPECT_TRUE(g->empty());  // device 1 has room, but the job must run where "m" is
  EXPECT_EQ(revoked(s), std::vector<std::string>{"resident-n"});
  ASSERT_TRUE(s.release("resident-n", 5 * kSecond).ok());
  const auto grants = s.schedule(6 * kSecond);
  ASSERT_EQ(grants.size(), 1u);
  EXPECT_EQ(grants[0].job_id, "job");
  EXPECT_EQ(grants[0].devices, std::vector<int>{0});
  EXPECT_EQ(last_used(s, "resident-m"), 6 * kSecond);  // used at the grant
  EXPECT_EQ(s.find_active("resident-m")->second.revoking, false);
}

TEST(BesideResident, WaitsWhenOnlyItsOwnModelCouldMakeRoom) {
  Scheduler s = make({16});
  start(s, resident("m", 8, 0), 1 * kSecond);
  start(s, req("other", 6, 0), 2 * kSecond);
  auto g = s.enqueue(beside("job", 6, "m"), Holder{2, 2}, 3 * kSecond, std::nullopt);
  ASSERT_TRUE(g.ok()) << g.status().to_string();
  EXPECT_TRUE(g->empty());
  EXPECT_TRUE(revoked(s).empty());
  ASSERT_TRUE(s.release("other", 4 * kSecond).ok());
  const auto grants = s.schedule(5 * kSecond);
  ASSERT_EQ(grants.size(), 1u);
  EXPECT_EQ(last_used(s, "resident-m"), 5 * kSecond);
}

TEST(BesideResident, AnImmediateStartTouchesTheModelAndStaysOnItsDevice) {
  Scheduler s = make({16, 40});
  start(s, resident("m", 6, 0), 1 * kSecond);
  auto g = s.try_start(beside("job", 6, "m"), Holder{2, 2}, 7 * kSecond);
  ASSERT_TRUE(g.ok()) << g.status().to_string();
  EXPECT_EQ((*g)->second.devices, std::vector<int>{0});
  EXPECT_EQ(last_used(s, "resident-m"), 7 * kSecond);
  // Without room beside the model, try_start does not go elsewhere.
  EXPECT_EQ(s.try_start(beside("job2", 6, "m"), Holder{2, 2}, 8 * kSecond).status().code(),
            ErrorCode::kResourceExhausted);
}

TEST(BesideResident, KeepsWaitingOnTheSameDeviceWhenTheModelGoes) {
  Scheduler s = make({16, 40});
  start(s, resident("m", 8, 0), 1 * kSecond);
  start(s, req("other", 6, 0), 2 * kSecond);
  ASSERT_TRUE(s.enqueue(beside("job", 6, "m"), Holder{2, 2}, 3 * kSecond, std::nullopt).ok());
  ASSERT_TRUE(s.release("resident-m", 4 * kSecond).ok());
  const auto grants = s.schedule(4 * kSecond);
  ASSERT_EQ(grants.size(), 1u);
  EXPECT_EQ(grants[0].devices, std::vector<int>{0});
}

TEST(BesideResident, BadRequestsAreErrorsThatChangeNothing) {
  Scheduler s = make({16, 16, 16});
  start(s, resident("m", 4, 1), 1 * kSecond);
  struct Case {
    LeaseRequest request;
    ErrorCode code;
    std::string message;
  };
  std::vector<Case> cases;
  cases.push_back(
      {beside("a", 1, "gone"), ErrorCode::kNotFound, "no resident 'gone' to run beside"});
  cases.push_back({beside("a", 1, "bad\x1b"), ErrorCode::kInvalidArgument, "control characters"});
  cases.push_back({beside("a", 1, std::string(300, 'x')), ErrorCode::kInvalidArgument, "limit"});
  {
    LeaseRequest r = beside("a", 1, "m");
    r.resident = "n";
    cases.push_back(
        {r, ErrorCode::kInvalidArgument, "resident 'n' cannot run beside resident 'm'"});
  }
  {
    LeaseRequest r = beside("a", 1, "m");
    r.device = 2;
    cases.push_back(
        {r, ErrorCode::kInvalidArgument, "pinned to device 2, but resident 'm' is on device 1"});
  }
  {
    LeaseRequest r = beside("a", 1, "m");
    r.allowed_devices = {0, 2};
    cases.push_back({r, ErrorCode::kInvalidArgument,
                     "resident 'm' is on device 1, outside the allowed devices 0,2"});
  }
  {
    LeaseRequest r = beside("a", 1, "m");
    r.gpus = 2;
    cases.push_back(
        {r, ErrorCode::kInvalidArgument, "cannot run beside resident 'm', which is on device 1"});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.message);
    const Status checked = s.check(c.request);
    EXPECT_EQ(checked.code(), c.code) << checked.to_string();
    EXPECT_NE(checked.message().find(c.message), std::string::npos) << checked.message();
    auto enq = s.enqueue(c.request, Holder{2, 2}, 2 * kSecond, std::nullopt);
    EXPECT_EQ(enq.status().code(), c.code);
    EXPECT_EQ(s.try_start(c.request, Holder{2, 2}, 2 * kSecond).status().code(), c.code);
    EXPECT_EQ(s.waiting_count(), 0u);
    EXPECT_EQ(s.active_count(), 1);
    EXPECT_EQ(last_used(s, "resident-m"), 1 * kSecond);
  }
  // Within its allowed devices or pinned there, it is fine.
  LeaseRequest ok = beside("a", 1, "m");
  ok.allowed_devices = {1, 2};
  EXPECT_TRUE(s.check(ok).ok());
  ok.allowed_devices.clear();
  ok.device = 1;
  EXPECT_TRUE(s.check(ok).ok());
}

TEST(BesideResident, AResidentBeingRevokedCannotBeJoined) {
  Scheduler s = make({16});
  start(s, resident("m", 4, 0), 1 * kSecond);
  ASSERT_TRUE(s.revoke("resident-m").ok());
  const Status st = s.check(beside("a", 1, "m"));
  EXPECT_EQ(st.code(), ErrorCode::kFailedPrecondition);
  EXPECT_NE(st.message().find("resident 'm' is being revoked"), std::string::npos);
}

TEST(BesideResident, AnIdleResidentGoesBeforeOneInUseWhateverTheirLastUse) {
  // Two 16 GiB devices. "m" on device 0 is the least recently used resident, but a job runs
  // beside it; "n" on device 1 was used later and is idle. A waiter of 10 GiB fits on
  // either device once its resident goes: "n" goes, since unloading "m" would cut its job
  // short. Least recently used alone would take "m".
  Scheduler s = make({16, 16});
  start(s, resident("m", 8, 0), 1 * kSecond);
  start(s, resident("n", 8, 1), 2 * kSecond);
  start(s, beside("on-m", 2, "m"), 3 * kSecond);
  ASSERT_TRUE(s.touch("resident-n", 5 * kSecond).ok());  // "m" last used at 3 s
  EXPECT_EQ(users(s, "resident-m"), 1);
  EXPECT_EQ(users(s, "resident-n"), 0);
  ASSERT_TRUE(s.enqueue(req("big", 10), Holder{2, 2}, 6 * kSecond, std::nullopt).ok());
  EXPECT_EQ(revoked(s), std::vector<std::string>{"resident-n"});
}

TEST(BesideResident, OnOneDeviceTooTheIdleResidentGoesFirst) {
  // One 16 GiB device: "m" (6 GiB, the least recently used, a 2 GiB job beside it) and "n"
  // (6 GiB, idle); 2 GiB free. A 6 GiB waiter needs one of them gone: "n".
  Scheduler s = make({16});
  start(s, resident("m", 6, 0), 1 * kSecond);
  start(s, resident("n", 6, 0), 2 * kSecond);
  start(s, beside("on-m", 2, "m"), 1 * kSecond);  // granted at 1 s: "m" stays the older use
  ASSERT_LT(last_used(s, "resident-m"), last_used(s, "resident-n"));
  ASSERT_TRUE(s.enqueue(req("w", 6), Holder{2, 2}, 3 * kSecond, std::nullopt).ok());
  EXPECT_EQ(revoked(s), std::vector<std::string>{"resident-n"});
}

TEST(BesideResident, AResidentInUseStillGivesWayWhenOnlyItCanMakeRoom) {
  Scheduler s = make({16});
  start(s, resident("m", 8, 0), 1 * kSecond);
  start(s, beside("on-m", 2, "m"), 2 * kSecond);
  ASSERT_TRUE(s.enqueue(req("big", 12), Holder{2, 2}, 3 * kSecond, std::nullopt).ok());
  EXPECT_EQ(revoked(s), std::vector<std::string>{"resident-m"});
}

TEST(BesideResident, TheUseEndsWithTheJobAndFollowsTheModelNotItsName) {
  Scheduler s = make({16});
  start(s, resident("m", 4, 0), 1 * kSecond);
  start(s, beside("a", 2, "m"), 2 * kSecond);
  start(s, beside("b", 2, "m"), 3 * kSecond);
  EXPECT_EQ(users(s, "resident-m"), 2);
  ASSERT_TRUE(s.release("a", 4 * kSecond).ok());
  EXPECT_EQ(users(s, "resident-m"), 1);
  // "m" is unloaded while "b" runs and loaded again under the same name: "b" ran beside the
  // old copy, so its end does not make the new one idle early, nor count below zero.
  ASSERT_TRUE(s.release("resident-m", 5 * kSecond).ok());
  LeaseRequest again = resident("m", 4, 0);
  again.job_id = "resident-m-again";
  start(s, again, 6 * kSecond);
  start(s, beside("c", 2, "m"), 7 * kSecond);
  ASSERT_TRUE(s.release("b", 8 * kSecond).ok());
  EXPECT_EQ(users(s, "resident-m-again"), 1);
  ASSERT_TRUE(s.release("c", 9 * kSecond).ok());
  EXPECT_EQ(users(s, "resident-m-again"), 0);
  // A granted entry is reused for later leases: a new resident starts with no users.
  ASSERT_TRUE(s.release("resident-m-again", 10 * kSecond).ok());
  start(s, resident("m", 4, 0), 11 * kSecond);
  EXPECT_EQ(users(s, "resident-m"), 0);
}

}  // namespace
}  // namespace gpumgr::core
