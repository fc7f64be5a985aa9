// Manager and in-process ledger (issue 2, section 3): options, the accounting model, leases,
// the job table, statistics, framework hooks, synchronisation and the default manager.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <vector>

#include "test_util.h"

namespace gpumgr {
namespace {

using testing::capacity_of;
using testing::local_options;
using testing::make_sim_manager;
using testing::request;
using testing::snap;

constexpr std::uint64_t k24GiB = 24 * kGiB;

TEST(ManagerOptionsTest, DefaultsAreAutoThreeJobsAndEightyPercent) {
  const ManagerOptions o;
  EXPECT_EQ(o.device, "auto");
  EXPECT_EQ(o.max_concurrent_jobs, 3);
  EXPECT_DOUBLE_EQ(o.memory_limit, 0.8);
  const LedgerConfig c;
  EXPECT_EQ(c.max_concurrent_jobs, 3);
  EXPECT_DOUBLE_EQ(c.memory_limit, 0.8);
}

TEST(ManagerOptionsTest, MemoryLimitOfExactlyOneIsAccepted) {
  // The range is (0, 1]: 1 itself is valid and gives the whole device.
  auto m = make_sim_manager({k24GiB}, local_options(3, 1.0));
  ASSERT_NE(m.manager, nullptr);
  EXPECT_EQ(snap(*m.manager).devices[0].capacity_bytes, k24GiB);
}

TEST(ManagerOptionsTest, DeviceSelectorsResolveToDeviceStrings) {
  // "cuda:1" pins every lease to device 1; "cuda" and "auto" over simulated GPUs give "cuda".
  for (const auto& [selector, device_string] : std::vector<std::pair<std::string, std::string>>{
           {"auto", "cuda"}, {"cuda", "cuda"}, {"cuda:1", "cuda:1"}}) {
    ManagerOptions o = local_options();
    o.device = selector;
    o.simulate = "2x24GiB";
    auto m = Manager::create(o);
    ASSERT_TRUE(m.ok()) << selector << ": " << m.status().to_string();
    EXPECT_EQ((*m)->device_string(), device_string) << selector;
    EXPECT_TRUE((*m)->uses_gpu()) << selector;
  }
  ManagerOptions o = local_options();
  o.device = "cuda:1";
  o.simulate = "2x24GiB";
  auto pinned = Manager::create(o);
  ASSERT_TRUE(pinned.ok());
  auto lease = (*pinned)->try_acquire(request("pinned", kGiB));
  ASSERT_TRUE(lease.ok()) << lease.status().to_string();
  EXPECT_EQ(lease->device(), 1);
}

TEST(ManagerOptionsTest, CpuSelectorGivesTheCpuDevice) {
  ManagerOptions o = local_options();
  o.device = "cpu";
  o.simulate = "2x24GiB";  // "cpu" wins over simulated GPUs
  auto m = Manager::create(o);
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  EXPECT_EQ((*m)->device_string(), "cpu");
  EXPECT_FALSE((*m)->uses_gpu());
  auto s = (*m)->snapshot();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->backend.name, "cpu");
  ASSERT_EQ(s->devices.size(), 1u);
  EXPECT_EQ(s->devices[0].info.kind, DeviceKind::kCpu);
}

TEST(AccountingTest, CapacityIsTheFloorOfLimitTimesTotal) {
  // 0.8 * 24 GiB = 20615843020.8 bytes: the floor, not a rounding up.
  auto m = make_sim_manager({k24GiB, 80 * kGiB});
  ASSERT_NE(m.manager, nullptr);
  const Snapshot s = snap(*m.manager);
  ASSERT_EQ(s.devices.size(), 2u);
  EXPECT_EQ(s.devices[0].capacity_bytes, 20615843020u);
  EXPECT_EQ(s.devices[0].capacity_bytes, capacity_of(k24GiB, 4, 5));
  EXPECT_EQ(s.devices[1].capacity_bytes, capacity_of(80 * kGiB, 4, 5));
  EXPECT_EQ(s.devices[0].admissible_bytes, s.devices[0].capacity_bytes);
  EXPECT_EQ(s.devices[0].leased_bytes, 0u);
  EXPECT_EQ(s.devices[0].foreign_bytes, 0u);
}

TEST(AccountingTest, OutsideProcessReducesAdmissibleByExactlyItsUsage) {
  // A process holding no lease takes 10 GiB of a 24 GiB device: admissible drops by exactly
  // 10737418240 bytes, and a lease that fitted before no longer does.
  auto m = make_sim_manager({k24GiB});
  ASSERT_NE(m.manager, nullptr);
  const std::uint64_t before = snap(*m.manager).devices[0].admissible_bytes;
  ASSERT_TRUE(m.sim->set_foreign_usage(0, 10 * kGiB).ok());
  const Snapshot after = snap(*m.manager);  // snapshot() reads the backend afresh
  EXPECT_EQ(after.devices[0].foreign_bytes, 10737418240u);
  EXPECT_EQ(before - after.devices[0].admissible_bytes, 10737418240u);
  EXPECT_EQ(after.devices[0].admissible_bytes, 20615843020u - 10737418240u);
  EXPECT_EQ(after.devices[0].info.used_bytes, 10 * kGiB);
  EXPECT_EQ(after.devices[0].info.free_bytes, 14 * kGiB);

  const std::uint64_t admissible = after.devices[0].admissible_bytes;
  EXPECT_EQ(m->can_admit(admissible).value(), true);
  EXPECT_EQ(m->can_admit(admissible + 1).value(), false);
  auto too_big = m->try_acquire(request("too-big", admissible + 1));
  ASSERT_FALSE(too_big.ok());
  EXPECT_EQ(too_big.status().code(), ErrorCode::kResourceExhausted);  // waiting could help
  auto exact = m->try_acquire(request("exact", admissible));
  ASSERT_TRUE(exact.ok()) << exact.status().to_string();
  EXPECT_EQ(snap(*m.manager).devices[0].admissible_bytes, 0u);
}

TEST(AccountingTest, LeaseHoldersOwnUsageIsNotForeign) {
  // The backend lists this process's pid using 3 GiB: it holds a lease there, so its usage
  // is covered by the lease and not counted again as outside use.
  auto m = make_sim_manager({k24GiB});
  ASSERT_NE(m.manager, nullptr);
  auto lease = m->try_acquire(request("mine", 4 * kGiB));
  ASSERT_TRUE(lease.ok());
  ASSERT_TRUE(m.sim->set_process_usage(0, lease->info().pid, 3 * kGiB).ok());
  ASSERT_TRUE(m.sim->set_process_usage(0, 999999, kGiB).ok());  // someone else
  Snapshot s = snap(*m.manager);
  EXPECT_EQ(lease->info().pid, static_cast<std::uint32_t>(::getpid()));
  EXPECT_EQ(s.devices[0].foreign_bytes, kGiB);
  EXPECT_EQ(s.devices[0].leased_bytes, 4 * kGiB);
  EXPECT_EQ(s.devices[0].admissible_bytes, 20615843020u - 4 * kGiB - kGiB);
  // Once the lease is gone, the same pid's memory is outside use like any other.
  ASSERT_TRUE(lease->release().ok());
  s = snap(*m.manager);
  EXPECT_EQ(s.devices[0].foreign_bytes, 4 * kGiB);
}

TEST(LeaseTest, TryAcquireGivesAnRaiiLeaseWithDeviceBytesAndJobId) {
  auto m = make_sim_manager({k24GiB, k24GiB});
  ASSERT_NE(m.manager, nullptr);
  {
    auto lease = m->try_acquire(request("job-1", 5 * kGiB));
    ASSERT_TRUE(lease.ok()) << lease.status().to_string();
    EXPECT_TRUE(lease->held());
    EXPECT_EQ(lease->job_id(), "job-1");
    EXPECT_EQ(lease->bytes(), 5 * kGiB);
    EXPECT_EQ(lease->device(), 0);  // best fit among equal devices: the lowest index
    EXPECT_EQ(lease->devices(), std::vector<int>{0});
    const Snapshot s = snap(*m.manager);
    EXPECT_EQ(s.devices[0].leased_bytes, 5 * kGiB);
    EXPECT_EQ(s.devices[0].active_leases, 1);
    EXPECT_EQ(s.devices[1].leased_bytes, 0u);
    EXPECT_EQ(s.stats.active_jobs, 1);
  }  // the destructor releases it
  const Snapshot s = snap(*m.manager);
  EXPECT_EQ(s.devices[0].leased_bytes, 0u);
  EXPECT_TRUE(s.leases.empty());
  EXPECT_EQ(s.stats.jobs_succeeded, 1u);
  EXPECT_EQ(s.stats.active_jobs, 0);
}

TEST(LeaseTest, IsMoveOnlyAndAMovedFromLeaseHoldsNothing) {
  static_assert(!std::is_copy_constructible_v<Lease>);
  static_assert(!std::is_copy_assignable_v<Lease>);
  static_assert(std::is_nothrow_move_constructible_v<Lease>);
  auto m = make_sim_manager({k24GiB});
  ASSERT_NE(m.manager, nullptr);
  Lease a = std::move(m->try_acquire(request("moved", kGiB))).value();
  Lease b = std::move(a);
  EXPECT_FALSE(a.held());  // NOLINT(bugprone-use-after-move): the point of the test
  EXPECT_TRUE(b.held());
  EXPECT_TRUE(a.release().ok());  // releasing the empty shell does nothing
  EXPECT_EQ(snap(*m.manager).devices[0].leased_bytes, kGiB);
  // Move-assigning over a held lease releases what it held.
  Lease c = std::move(m->try_acquire(request("other", 2 * kGiB))).value();
  c = std::move(b);
  const Snapshot s = snap(*m.manager);
  ASSERT_EQ(s.leases.size(), 1u);
  EXPECT_EQ(s.leases[0].job_id, "moved");
  EXPECT_EQ(s.stats.jobs_succeeded, 1u);
}

TEST(LeaseTest, ReleaseIsIdempotent) {
  auto m = make_sim_manager({k24GiB});
  ASSERT_NE(m.manager, nullptr);
  auto lease = m->try_acquire(request("twice", kGiB));
  ASSERT_TRUE(lease.ok());
  EXPECT_TRUE(lease->release().ok());
  EXPECT_FALSE(lease->held());
  EXPECT_TRUE(lease->release().ok());
  EXPECT_TRUE(lease->release(JobOutcome::kFailed).ok());
  const Snapshot s = snap(*m.manager);
  EXPECT_EQ(s.stats.jobs_succeeded, 1u);  // counted once, and not turned into a failure
  EXPECT_EQ(s.stats.jobs_failed, 0u);
}

TEST(LeaseTest, MarkFailedCountsTheJobAsFailed) {
  auto m = make_sim_manager({k24GiB});
  ASSERT_NE(m.manager, nullptr);
  {
    auto ok = m->try_acquire(request("ok", kGiB));
    auto bad = m->try_acquire(request("bad", kGiB));
    ASSERT_TRUE(ok.ok() && bad.ok());
    bad->mark_failed();
    EXPECT_EQ(bad->outcome(), JobOutcome::kFailed);
    EXPECT_EQ(ok->outcome(), JobOutcome::kSucceeded);
  }
  {
    auto explicit_failure = m->try_acquire(request("explicit", kGiB));
    ASSERT_TRUE(explicit_failure.ok());
    EXPECT_TRUE(explicit_failure->release(JobOutcome::kFailed).ok());
  }
  const Snapshot s = snap(*m.manager);
  EXPECT_EQ(s.stats.jobs_succeeded, 1u);
  EXPECT_EQ(s.stats.jobs_failed, 2u);
  EXPECT_EQ(s.stats.jobs_processed(), 3u);
}

TEST(LeaseTest, ReleaseByJobIdFreesTheLeaseAndTheLeaseObjectStaysQuiet) {
  auto m = make_sim_manager({k24GiB});
  ASSERT_NE(m.manager, nullptr);
  auto lease = m->try_acquire(request("by-id", 3 * kGiB));
  ASSERT_TRUE(lease.ok());
  EXPECT_TRUE(m->release("by-id", JobOutcome::kFailed).ok());
  Snapshot s = snap(*m.manager);
  EXPECT_EQ(s.devices[0].leased_bytes, 0u);
  EXPECT_EQ(s.stats.jobs_failed, 1u);
  // The Lease object no longer owns anything in the ledger: its release is OK and changes
  // no counter.
  EXPECT_TRUE(lease->release().ok());
  s = snap(*m.manager);
  EXPECT_EQ(s.stats.jobs_succeeded, 0u);
  EXPECT_EQ(s.stats.jobs_failed, 1u);
  // A second release by id is an error: nothing by that id is active.
  const Status again = m->release("by-id");
  EXPECT_EQ(again.code(), ErrorCode::kNotFound);
}

TEST(LeaseTest, LeaseOutlivingItsManagerIsStillReturned) {
  auto sim = std::make_shared<SimulatedBackend>(std::vector<std::uint64_t>{k24GiB});
  std::shared_ptr<Ledger> ledger;
  Lease lease;
  {
    auto m = Manager::create(local_options(), sim);
    ASSERT_TRUE(m.ok());
    ledger = (*m)->ledger();
    lease = std::move((*m)->try_acquire(request("orphan", kGiB))).value();
  }
  EXPECT_TRUE(lease.held());
  EXPECT_TRUE(lease.release().ok());
  auto s = ledger->snapshot();
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->leases.empty());
  EXPECT_EQ(s->stats.jobs_succeeded, 1u);
}

TEST(JobTableTest, SnapshotListsActiveLeasesWithTheirFields) {
  auto m = make_sim_manager({k24GiB, k24GiB});
  ASSERT_NE(m.manager, nullptr);
  LeaseRequest r = request("render-42", 6 * kGiB, 5);
  r.command = "python render.py";
  auto a = m->try_acquire(r);
  auto b = m->try_acquire(request("other", 2 * kGiB));
  ASSERT_TRUE(a.ok() && b.ok());
  const Snapshot s = snap(*m.manager);
  ASSERT_EQ(s.leases.size(), 2u);
  std::set<std::string> ids;
  for (const auto& l : s.leases) ids.insert(l.job_id);
  EXPECT_EQ(ids, (std::set<std::string>{"render-42", "other"}));
  const LeaseInfo& render = s.leases[0].job_id == "render-42" ? s.leases[0] : s.leases[1];
  EXPECT_EQ(render.bytes, 6 * kGiB);
  EXPECT_EQ(render.priority, 5);
  EXPECT_EQ(render.command, "python render.py");
  EXPECT_EQ(render.pid, static_cast<std::uint32_t>(::getpid()));
  EXPECT_EQ(render.uid, static_cast<std::uint32_t>(::getuid()));
  EXPECT_EQ(render.devices, a->devices());
  EXPECT_DOUBLE_EQ(render.waited_s, 0.0);  // a non-blocking grant never waited
  EXPECT_TRUE(s.queue.empty());
  EXPECT_EQ(s.source, "in-process");
}

TEST(JobTableTest, GrantTimesAreWallClockTimes) {
  auto m = make_sim_manager({k24GiB});
  ASSERT_NE(m.manager, nullptr);
  const auto before = std::chrono::system_clock::now();
  auto lease = m->try_acquire(request("timed", kGiB));
  const auto after = std::chrono::system_clock::now();
  ASSERT_TRUE(lease.ok());
  // Derived from the steady clock by an offset taken at the last refresh: allow for the
  // offset's own two clock reads, not for seconds.
  const auto slack = std::chrono::milliseconds(5);
  EXPECT_GE(lease->info().granted_at, before - slack);
  EXPECT_LE(lease->info().granted_at, after + slack);
  const Snapshot s = snap(*m.manager);
  ASSERT_EQ(s.leases.size(), 1u);
  EXPECT_GE(s.leases[0].granted_at, before - slack);
  EXPECT_LE(s.leases[0].granted_at, after + slack);
}

// A lease released by job id, whose id is then reused, must not release the newer lease
// when the old handle is released or destroyed.
TEST(JobTableTest, AnOldHandleDoesNotReleaseANewerLeaseOfTheSameJobId) {
  auto m = make_sim_manager({k24GiB});
  ASSERT_NE(m.manager, nullptr);
  auto old_lease = m->try_acquire(request("reused", kGiB));
  ASSERT_TRUE(old_lease.ok());
  ASSERT_TRUE(m->release("reused").ok());
  auto new_lease = m->try_acquire(request("reused", 2 * kGiB));
  ASSERT_TRUE(new_lease.ok());
  EXPECT_TRUE(old_lease->release().ok());  // already released: nothing to do
  Snapshot s = snap(*m.manager);
  ASSERT_EQ(s.leases.size(), 1u);
  EXPECT_EQ(s.leases[0].bytes, 2 * kGiB);
  EXPECT_EQ(s.devices[0].leased_bytes, 2 * kGiB);
  EXPECT_EQ(s.stats.jobs_succeeded, 1u);
  ASSERT_TRUE(new_lease->release().ok());
  EXPECT_EQ(snap(*m.manager).devices[0].leased_bytes, 0u);
}

TEST(JobTableTest, DuplicateActiveJobIdIsRejectedAndReusableAfterRelease) {
  auto m = make_sim_manager({k24GiB});
  ASSERT_NE(m.manager, nullptr);
  auto first = m->try_acquire(request("same", kGiB));
  ASSERT_TRUE(first.ok());
  auto second = m->try_acquire(request("same", kGiB));
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), ErrorCode::kAlreadyExists);
  EXPECT_NE(second.status().message().find("'same'"), std::string::npos);
  EXPECT_EQ(snap(*m.manager).devices[0].leased_bytes, kGiB);  // the duplicate took nothing
  ASSERT_TRUE(first->release().ok());
  auto third = m->try_acquire(request("same", kGiB));
  EXPECT_TRUE(third.ok()) << third.status().to_string();
}

TEST(StatsTest, CountsPeaksAndHoldTimes) {
  auto m = make_sim_manager({k24GiB, k24GiB});
  ASSERT_NE(m.manager, nullptr);
  {
    auto a = m->try_acquire(request("a", 4 * kGiB));
    auto b = m->try_acquire(request("b", 6 * kGiB));
    auto c = m->try_acquire(request("c", 2 * kGiB));
    ASSERT_TRUE(a.ok() && b.ok() && c.ok());
    auto d = m->try_acquire(request("d", kGiB));  // the fourth under a limit of 3
    ASSERT_FALSE(d.ok());
    EXPECT_EQ(d.status().code(), ErrorCode::kResourceExhausted);
    auto never = m->try_acquire(request("never", 30 * kGiB));
    EXPECT_EQ(never.status().code(), ErrorCode::kNeverFits);
    const Snapshot during = snap(*m.manager);
    EXPECT_EQ(during.stats.active_jobs, 3);
    EXPECT_EQ(during.stats.peak_active_jobs, 3);
    b->mark_failed();
  }
  auto e = m->try_acquire(request("e", kGiB));
  ASSERT_TRUE(e.ok());
  ASSERT_TRUE(e->release().ok());
  const Snapshot s = snap(*m.manager);
  EXPECT_EQ(s.stats.jobs_succeeded, 3u);
  EXPECT_EQ(s.stats.jobs_failed, 1u);
  EXPECT_EQ(s.stats.jobs_processed(), 4u);
  EXPECT_EQ(s.stats.jobs_rejected, 2u);  // "d" (no room now) and "never"
  EXPECT_EQ(s.stats.active_jobs, 0);
  EXPECT_EQ(s.stats.peak_active_jobs, 3);
  // Best fit packs a, b and c onto device 0 (12 GiB); device 1 only ever held nothing.
  std::uint64_t peak_total = 0;
  for (const auto& d : s.devices) peak_total += d.peak_leased_bytes;
  EXPECT_EQ(s.devices[0].peak_leased_bytes, 12 * kGiB);
  EXPECT_EQ(peak_total, 12 * kGiB);
  // Hold times: one observation per released lease, all short.
  EXPECT_EQ(s.stats.hold_seconds.count, 4u);
  EXPECT_EQ(s.stats.hold_seconds.counts.back(), 4u);  // the +Inf bucket counts everything
  EXPECT_EQ(s.stats.hold_seconds.counts.size(), s.stats.hold_seconds.bounds.size() + 1);
  EXPECT_GE(s.stats.hold_seconds.min, 0.0);
  EXPECT_LE(s.stats.hold_seconds.min, s.stats.hold_seconds.max);
  EXPECT_LT(s.stats.hold_seconds.max, 60.0);
  EXPECT_GE(s.stats.hold_seconds.sum, s.stats.hold_seconds.max);
  EXPECT_EQ(s.stats.wait_seconds.count, 4u);  // every granted lease, waited or not
}

TEST(StatsTest, HoldTimeHistogramBucketsAreCumulative) {
  // A lease held at least 30 ms lands above the 25 ms bucket and in every bucket from 50 ms.
  auto m = make_sim_manager({k24GiB});
  ASSERT_NE(m.manager, nullptr);
  auto lease = m->try_acquire(request("held", kGiB));
  ASSERT_TRUE(lease.ok());
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(testing::wait_until(
      [&] { return std::chrono::steady_clock::now() - start >= std::chrono::milliseconds(30); }));
  ASSERT_TRUE(lease->release().ok());
  const Histogram h = snap(*m.manager).stats.hold_seconds;
  ASSERT_EQ(h.count, 1u);
  EXPECT_GE(h.sum, 0.030);
  EXPECT_DOUBLE_EQ(h.min, h.max);
  for (std::size_t i = 0; i < h.bounds.size(); ++i) {
    EXPECT_EQ(h.counts[i], h.sum <= h.bounds[i] ? 1u : 0u) << "bucket <= " << h.bounds[i];
  }
}

TEST(HooksTest, CleanupHookRunsOncePerReleasedLeaseOnItsDevice) {
  auto m = make_sim_manager({k24GiB, k24GiB, k24GiB});
  ASSERT_NE(m.manager, nullptr);
  std::mutex mutex;
  std::vector<int> cleaned;
  m->set_cleanup_hook([&](int device) {
    std::lock_guard lock(mutex);
    cleaned.push_back(device);
  });
  // Fill device 0 so that the next lease goes elsewhere; pin one to device 2.
  auto big = m->try_acquire(request("big", 19 * kGiB));
  ASSERT_TRUE(big.ok());
  ASSERT_EQ(big->device(), 0);
  auto second = m->try_acquire(request("second", 5 * kGiB));
  ASSERT_TRUE(second.ok());
  ASSERT_EQ(second->device(), 1);
  LeaseRequest pinned = request("pinned", kGiB);
  pinned.device = 2;
  auto third = m->try_acquire(pinned);
  ASSERT_TRUE(third.ok());
  ASSERT_EQ(third->device(), 2);
  EXPECT_TRUE(cleaned.empty());  // nothing runs at grant time

  ASSERT_TRUE(second->release().ok());
  EXPECT_EQ(cleaned, std::vector<int>{1});
  ASSERT_TRUE(m->release("pinned").ok());  // by id: the hook runs too
  EXPECT_EQ(cleaned, (std::vector<int>{1, 2}));
  big->mark_failed();
  big = StatusOr<Lease>(Lease{});  // destroying the lease releases it
  EXPECT_EQ(cleaned, (std::vector<int>{1, 2, 0}));
  ASSERT_TRUE(second->release().ok());  // idempotent: no second cleanup
  EXPECT_EQ(cleaned.size(), 3u);
  // A failed release (unknown job) cleans nothing.
  EXPECT_EQ(m->release("nobody").code(), ErrorCode::kNotFound);
  EXPECT_EQ(cleaned.size(), 3u);
}

TEST(HooksTest, CleanupRunsOnEachDeviceOfAMultiGpuLease) {
  auto m = make_sim_manager({k24GiB, k24GiB, k24GiB});
  ASSERT_NE(m.manager, nullptr);
  std::vector<int> cleaned;
  m->set_cleanup_hook([&](int device) { cleaned.push_back(device); });
  LeaseRequest r = request("pair", 8 * kGiB);
  r.gpus = 2;
  auto lease = m->try_acquire(r);
  ASSERT_TRUE(lease.ok()) << lease.status().to_string();
  ASSERT_EQ(lease->devices().size(), 2u);
  const Snapshot s = snap(*m.manager);
  std::uint64_t leased = 0;
  for (const auto& d : s.devices) leased += d.leased_bytes;
  EXPECT_EQ(leased, 16 * kGiB);  // bytes are per device
  ASSERT_TRUE(lease->release().ok());
  EXPECT_EQ(cleaned, lease->devices());
}

TEST(HooksTest, RunCleanupCoversEveryDeviceUsedSoFar) {
  auto m = make_sim_manager({k24GiB, k24GiB, k24GiB});
  ASSERT_NE(m.manager, nullptr);
  std::vector<int> cleaned;
  m->set_cleanup_hook([&](int device) { cleaned.push_back(device); });
  m->run_cleanup();  // nothing used yet: device 0
  EXPECT_EQ(cleaned, std::vector<int>{0});
  cleaned.clear();
  LeaseRequest r = request("on2", kGiB);
  r.device = 2;
  ASSERT_TRUE(m->try_acquire(r).ok());  // released at once (temporary)
  cleaned.clear();
  m->run_cleanup();
  EXPECT_EQ(cleaned, std::vector<int>{2});
  cleaned.clear();
  m->run_cleanup(1);
  EXPECT_EQ(cleaned, std::vector<int>{1});
}

TEST(HooksTest, FrameworkMemoryProviderIsReportedPerDevice) {
  auto m = make_sim_manager({k24GiB, k24GiB});
  ASSERT_NE(m.manager, nullptr);
  EXPECT_FALSE(m->framework_memory(0).has_value());  // no provider
  m->set_framework_memory_provider([](int device) -> std::optional<FrameworkMemory> {
    if (device != 1) return std::nullopt;
    return FrameworkMemory{512 * kMiB, kGiB, 768 * kMiB};
  });
  EXPECT_FALSE(m->framework_memory(0).has_value());
  auto mem = m->framework_memory(1);
  ASSERT_TRUE(mem.has_value());
  EXPECT_EQ(mem->allocated_bytes, 512 * kMiB);
  EXPECT_EQ(mem->reserved_bytes, kGiB);
  EXPECT_EQ(mem->peak_allocated_bytes, 768 * kMiB);
  m->set_framework_memory_provider(nullptr);
  EXPECT_FALSE(m->framework_memory(1).has_value());
}

TEST(SynchronizeTest, SimulatedDeviceIsOkCpuIsUnavailable) {
  auto m = make_sim_manager({k24GiB, k24GiB});
  ASSERT_NE(m.manager, nullptr);
  EXPECT_TRUE(m->synchronize(0).ok());
  EXPECT_TRUE(m->synchronize(1).ok());
  EXPECT_EQ(m->synchronize(2).code(), ErrorCode::kNotFound);
  EXPECT_EQ(m->synchronize(-1).code(), ErrorCode::kNotFound);

  ManagerOptions o = local_options();
  o.device = "cpu";
  auto cpu = Manager::create(o);
  ASSERT_TRUE(cpu.ok()) << cpu.status().to_string();
  const Status s = (*cpu)->synchronize(0);
  EXPECT_EQ(s.code(), ErrorCode::kUnavailable);
  EXPECT_NE(s.message().find("CPU"), std::string::npos) << s.message();
}

TEST(DefaultManagerTest, SamePointerAndDifferencesReported) {
  ManagerOptions o = local_options();
  o.simulate = "2x24GiB";
  std::string difference = "unset";
  auto first = default_manager(o, &difference);
  ASSERT_TRUE(first.ok()) << first.status().to_string();
  EXPECT_EQ(difference, "");  // the options it was created with
  auto second = default_manager(o, &difference);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(*first, *second);
  EXPECT_EQ(difference, "");

  ManagerOptions other = o;
  other.max_concurrent_jobs = 5;
  other.memory_limit = 0.5;
  auto third = default_manager(other, &difference);
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(*third, *first);  // still the same manager, with its first options
  EXPECT_EQ((*third)->options().max_concurrent_jobs, 3);
  EXPECT_NE(difference.find("max_concurrent_jobs: 3 in use, 5 requested"), std::string::npos)
      << difference;
  EXPECT_NE(difference.find("memory_limit: 0.8 in use, 0.5 requested"), std::string::npos)
      << difference;
  // Shared across threads: every thread gets the same pointer.
  std::vector<Manager*> seen(4, nullptr);
  testing::JoiningThreads threads;
  for (std::size_t i = 0; i < seen.size(); ++i) {
    threads.spawn([&seen, i, o] {
      auto m = default_manager(o);
      if (m.ok()) seen[i] = m.value();
    });
  }
  threads.join();
  for (Manager* p : seen) EXPECT_EQ(p, *first);
}

TEST(DefaultManagerTest, DescribeOptionDifferenceIsEmptyForEqualOptions) {
  ManagerOptions a;
  EXPECT_EQ(describe_option_difference(a, a), "");
  ManagerOptions b = a;
  b.device = "cpu";
  EXPECT_EQ(describe_option_difference(a, b), "device: auto in use, cpu requested");
}

TEST(ThreadSafetyTest, ConcurrentAcquiresNeverOvercommitADevice) {
  // Four threads race for room on one 10 GiB device (capacity 8 GiB): at every moment the
  // granted leases fit, and at most two 3 GiB leases can ever be active together.
  auto m = make_sim_manager({10 * kGiB}, local_options(8, 0.8));
  ASSERT_NE(m.manager, nullptr);
  std::atomic<int> active{0};
  std::atomic<int> max_seen{0};
  std::atomic<int> granted{0};
  testing::JoiningThreads threads;
  for (int t = 0; t < 4; ++t) {
    threads.spawn([&, t] {
      for (int i = 0; i < 2000; ++i) {
        auto lease =
            m->try_acquire(request("t" + std::to_string(t) + "-" + std::to_string(i), 3 * kGiB));
        if (!lease.ok()) continue;
        ++granted;
        const int now = ++active;
        int prev = max_seen.load();
        while (now > prev && !max_seen.compare_exchange_weak(prev, now)) {
        }
        --active;
      }
    });
  }
  threads.join();
  EXPECT_LE(max_seen.load(), 2);
  EXPECT_GT(granted.load(), 0);
  const Snapshot s = snap(*m.manager);
  EXPECT_EQ(s.devices[0].leased_bytes, 0u);
  EXPECT_LE(s.devices[0].peak_leased_bytes, 6 * kGiB);
  EXPECT_EQ(s.stats.jobs_succeeded, static_cast<std::uint64_t>(granted.load()));
  EXPECT_EQ(s.stats.jobs_rejected, 8000u - static_cast<std::uint64_t>(granted.load()));
}

}  // namespace
}  // namespace gpumgr
