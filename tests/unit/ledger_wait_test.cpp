// The waiting side of the in-process ledger, through Manager: blocking acquires, deadlines,
// cancellation, never-fitting requests, and waiters woken by outside memory being freed or a
// device recovering. (The scheduler's pure rules are tested in scheduler_test.cpp.)
// Every wait here is a condition with a generous deadline, never a fixed sleep.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <string>
#include <vector>

#include "test_util.h"

namespace gpumgr {
namespace {

using testing::AsyncAcquire;
using testing::JoiningThreads;
using testing::kGenerous;
using testing::local_options;
using testing::make_sim_manager;
using testing::request;
using testing::snap;
using testing::wait_until;

constexpr std::uint64_t k24GiB = 24 * kGiB;
// How late a deadline may fire on a loaded machine under TSan. A timeout longer than this
// tells a deadline that fires at its time from one that fires at twice it.
constexpr std::chrono::seconds kDeadlineSlack{2};

// Waits until `job_id` is in the queue; a failure shows the queue as it was.
::testing::AssertionResult queued(Manager& m, const std::string& job_id) {
  std::vector<std::string> seen;
  const bool found = wait_until([&] {
    const Snapshot s = snap(m);
    seen.clear();
    for (const auto& w : s.queue) {
      if (w.job_id == job_id) return true;
      seen.push_back(w.job_id);
    }
    return false;
  });
  if (found) return ::testing::AssertionSuccess();
  auto failure = ::testing::AssertionFailure();
  failure << "waited " << kGenerous.count() << " s for '" << job_id
          << "' to be queued; the queue holds [";
  for (std::size_t i = 0; i < seen.size(); ++i) failure << (i ? ", " : "") << seen[i];
  return failure << "]";
}

TEST(LedgerWaitTest, BlockingAcquireIsGrantedWhenALeaseIsReleased) {
  auto m = make_sim_manager({k24GiB}, local_options(1, 0.8));
  ASSERT_NE(m.manager, nullptr);
  auto first = m->try_acquire(request("first", kGiB));
  ASSERT_TRUE(first.ok());
  AsyncAcquire waiting(*m.manager, request("second", 2 * kGiB));
  ASSERT_TRUE(queued(*m.manager, "second"));
  // Still waiting: the job limit of 1 is reached.
  EXPECT_TRUE(waiting.still_waiting());
  const Snapshot during = snap(*m.manager);
  ASSERT_EQ(during.queue.size(), 1u);
  EXPECT_EQ(during.queue[0].position, 0);
  EXPECT_EQ(during.queue[0].bytes, 2 * kGiB);
  EXPECT_EQ(during.queue[0].pid, static_cast<std::uint32_t>(::getpid()));

  ASSERT_TRUE(first->release().ok());
  ASSERT_TRUE(waiting.ended());
  auto second = waiting.get();
  ASSERT_TRUE(second.ok()) << second.status().to_string();
  EXPECT_EQ(second->job_id(), "second");
  EXPECT_EQ(second->bytes(), 2 * kGiB);
  EXPECT_GT(second->info().waited_s, 0.0);
  const Snapshot after = snap(*m.manager);
  EXPECT_TRUE(after.queue.empty());
  EXPECT_EQ(after.devices[0].leased_bytes, 2 * kGiB);
  EXPECT_EQ(after.stats.wait_seconds.count, 2u);
}

TEST(LedgerWaitTest, DeadlineGivesTimedOutAndLeavesTheQueue) {
  auto m = make_sim_manager({k24GiB}, local_options(1, 0.8));
  ASSERT_NE(m.manager, nullptr);
  auto holder = m->try_acquire(request("holder", kGiB));
  ASSERT_TRUE(holder.ok());
  // On a thread of its own, so that a deadline that never fires fails here, not as a hang.
  const auto start = std::chrono::steady_clock::now();
  AsyncAcquire waiting(*m.manager, request("late", kGiB), WaitOptions::for_seconds(0.1));
  ASSERT_TRUE(waiting.ended());
  const auto waited = std::chrono::steady_clock::now() - start;
  auto late = waiting.get();
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.status().code(), ErrorCode::kTimedOut);
  // Bounded from both sides: not before the deadline, and not long after it (generously:
  // the suite runs under TSan on two loaded cores).
  EXPECT_GE(waited, std::chrono::milliseconds(95));
  EXPECT_LT(waited, std::chrono::milliseconds(100) + kDeadlineSlack);
  const Snapshot s = snap(*m.manager);
  EXPECT_TRUE(s.queue.empty());
  EXPECT_EQ(s.stats.jobs_timed_out, 1u);
  EXPECT_EQ(s.leases.size(), 1u);
  // The id is free again.
  ASSERT_TRUE(holder->release().ok());
  EXPECT_TRUE(m->try_acquire(request("late", kGiB)).ok());
}

TEST(LedgerWaitTest, ADeadlineFiresAtItsTimeoutNotAtTwiceIt) {
  // 2.5 s: a deadline that fires at twice its timeout (5 s) lands past 2.5 s + the 2 s slack.
  // A waiter with no deadline, queued first, stays: only the expired request leaves.
  constexpr std::chrono::milliseconds kTimeout{2500};
  auto m = make_sim_manager({k24GiB}, local_options(1, 0.8));
  ASSERT_NE(m.manager, nullptr);
  auto holder = m->try_acquire(request("holder", kGiB));
  ASSERT_TRUE(holder.ok());
  AsyncAcquire patient(*m.manager, request("patient", kGiB));
  ASSERT_TRUE(queued(*m.manager, "patient"));
  const auto start = std::chrono::steady_clock::now();
  AsyncAcquire waiting(*m.manager, request("late", kGiB), WaitOptions::for_seconds(2.5));
  ASSERT_TRUE(waiting.ended());
  const auto waited = std::chrono::steady_clock::now() - start;
  auto late = waiting.get();
  ASSERT_FALSE(late.ok());
  EXPECT_EQ(late.status().code(), ErrorCode::kTimedOut) << late.status().to_string();
  EXPECT_GE(waited, kTimeout - std::chrono::milliseconds(5));
  EXPECT_LT(waited, kTimeout + kDeadlineSlack)
      << "a 2.5 s deadline fired after "
      << std::chrono::duration_cast<std::chrono::milliseconds>(waited).count() << " ms";
  const Snapshot s = snap(*m.manager);
  ASSERT_EQ(s.queue.size(), 1u);
  EXPECT_EQ(s.queue[0].job_id, "patient");
  EXPECT_EQ(s.stats.jobs_timed_out, 1u);
  EXPECT_TRUE(patient.still_waiting());
}

TEST(LedgerWaitTest, DeadlineAlreadyPassedGrantsIfRoomElseTimesOutAtOnce) {
  auto m = make_sim_manager({k24GiB}, local_options(1, 0.8));
  ASSERT_NE(m.manager, nullptr);
  AsyncAcquire at_once(*m.manager, request("now", kGiB), WaitOptions::for_seconds(0));
  ASSERT_TRUE(at_once.ended());
  auto now = at_once.get();
  ASSERT_TRUE(now.ok()) << now.status().to_string();
  const auto start = std::chrono::steady_clock::now();
  AsyncAcquire waiting(*m.manager, request("none", kGiB), WaitOptions::for_seconds(-1));
  ASSERT_TRUE(waiting.ended());
  EXPECT_LT(std::chrono::steady_clock::now() - start, kDeadlineSlack);  // at once, not later
  EXPECT_EQ(waiting.get().status().code(), ErrorCode::kTimedOut);
  EXPECT_EQ(snap(*m.manager).stats.jobs_timed_out, 1u);
}

TEST(LedgerWaitTest, CancelByJobIdGivesCancelled) {
  auto m = make_sim_manager({k24GiB}, local_options(1, 0.8));
  ASSERT_NE(m.manager, nullptr);
  auto holder = m->try_acquire(request("holder", kGiB));
  ASSERT_TRUE(holder.ok());
  AsyncAcquire waiting(*m.manager, request("victim", kGiB));
  ASSERT_TRUE(queued(*m.manager, "victim"));
  ASSERT_TRUE(m->cancel("victim").ok());
  ASSERT_TRUE(waiting.ended());
  auto result = waiting.get();
  EXPECT_EQ(result.status().code(), ErrorCode::kCancelled);
  EXPECT_NE(result.status().message().find("victim"), std::string::npos);
  EXPECT_EQ(m->cancel("victim").code(), ErrorCode::kNotFound);
  const Snapshot s = snap(*m.manager);
  EXPECT_TRUE(s.queue.empty());
  EXPECT_EQ(s.stats.jobs_cancelled, 1u);
  EXPECT_EQ(s.leases.size(), 1u);
}

TEST(LedgerWaitTest, CancelTokenGivesCancelled) {
  auto m = make_sim_manager({k24GiB}, local_options(1, 0.8));
  ASSERT_NE(m.manager, nullptr);
  auto holder = m->try_acquire(request("holder", kGiB));
  ASSERT_TRUE(holder.ok());
  CancelToken token;
  WaitOptions wait;
  wait.cancel = token;
  AsyncAcquire waiting(*m.manager, request("tokened", kGiB), wait);
  ASSERT_TRUE(queued(*m.manager, "tokened"));
  token.cancel();
  EXPECT_TRUE(token.cancelled());
  ASSERT_TRUE(waiting.ended());
  EXPECT_EQ(waiting.get().status().code(), ErrorCode::kCancelled);
  EXPECT_TRUE(snap(*m.manager).queue.empty());

  // A token cancelled beforehand: refused at once, never queued, and the id stays free.
  AsyncAcquire again(*m.manager, request("tokened", kGiB), wait);
  ASSERT_TRUE(again.ended());
  EXPECT_EQ(again.get().status().code(), ErrorCode::kCancelled);
  ASSERT_TRUE(holder->release().ok());
  EXPECT_TRUE(m->try_acquire(request("tokened", kGiB)).ok());
}

TEST(LedgerWaitTest, CancelTokenAfterTheGrantChangesNothing) {
  auto m = make_sim_manager({k24GiB});
  ASSERT_NE(m.manager, nullptr);
  CancelToken token;
  WaitOptions wait;
  wait.cancel = token;
  auto lease = m->acquire(request("granted", kGiB), wait);
  ASSERT_TRUE(lease.ok());
  token.cancel();  // the subscription ended with the acquire: the lease stays
  EXPECT_TRUE(lease->held());
  EXPECT_EQ(snap(*m.manager).leases.size(), 1u);
}

TEST(LedgerWaitTest, NeverFittingRequestFailsAtOnceWithoutADeadline) {
  auto m = make_sim_manager({k24GiB, k24GiB});
  ASSERT_NE(m.manager, nullptr);
  AsyncAcquire f(*m.manager, request("huge", 20 * kGiB));  // no deadline
  ASSERT_TRUE(f.ended());
  auto result = f.get();
  EXPECT_EQ(result.status().code(), ErrorCode::kNeverFits);
  EXPECT_NE(result.status().message().find("19.2 GiB"), std::string::npos)
      << result.status().message();
  EXPECT_TRUE(snap(*m.manager).queue.empty());
  // 15 GiB on each of two GPUs is within the two largest capacities: it waits or starts.
  LeaseRequest pair = request("pair", 15 * kGiB);
  pair.gpus = 2;
  AsyncAcquire paired(*m.manager, pair, WaitOptions::for_seconds(5));
  ASSERT_TRUE(paired.ended());
  EXPECT_TRUE(paired.get().ok());
}

TEST(LedgerWaitTest, WaiterWakesWhenOutsideMemoryIsFreed) {
  // An outside process holds 20 GiB of 24 (more than the 19.2 GiB capacity): a 4 GiB request
  // waits. When the process exits, the ledger's polling (every 10 ms here) sees it and grants.
  auto m = make_sim_manager({k24GiB});
  ASSERT_NE(m.manager, nullptr);
  ASSERT_TRUE(m.sim->set_foreign_usage(0, 20 * kGiB).ok());
  EXPECT_EQ(snap(*m.manager).devices[0].admissible_bytes, 0u);
  AsyncAcquire waiting(*m.manager, request("patient", 4 * kGiB));
  ASSERT_TRUE(queued(*m.manager, "patient"));
  EXPECT_TRUE(waiting.still_waiting(std::chrono::milliseconds(30)));
  const std::uint64_t queries_before = m.sim->query_count();
  ASSERT_TRUE(m.sim->set_foreign_usage(0, 0).ok());
  // No call into the manager from here: only its own polling can grant the request.
  ASSERT_TRUE(waiting.ended());
  auto lease = waiting.get();
  ASSERT_TRUE(lease.ok()) << lease.status().to_string();
  EXPECT_GT(m.sim->query_count(), queries_before);
  EXPECT_EQ(lease->bytes(), 4 * kGiB);
}

TEST(LedgerWaitTest, WaiterWakesWhenTheDeviceRecovers) {
  auto m = make_sim_manager({k24GiB});
  ASSERT_NE(m.manager, nullptr);
  ASSERT_TRUE(m.sim->set_healthy(0, false, "GPU is lost (NVML error 15)").ok());
  const Snapshot lost = snap(*m.manager);
  EXPECT_FALSE(lost.devices[0].info.healthy);
  EXPECT_EQ(lost.devices[0].info.health_reason, "GPU is lost (NVML error 15)");
  EXPECT_FALSE(m->can_admit(kGiB).value());
  EXPECT_EQ(m->try_acquire(request("now", kGiB)).status().code(), ErrorCode::kResourceExhausted);
  // Blocking: waits (a lost GPU may come back), rather than failing as never-fitting.
  AsyncAcquire waiting(*m.manager, request("later", kGiB));
  ASSERT_TRUE(queued(*m.manager, "later"));
  ASSERT_TRUE(m.sim->set_healthy(0, true).ok());
  ASSERT_TRUE(waiting.ended());
  auto lease = waiting.get();
  ASSERT_TRUE(lease.ok()) << lease.status().to_string();
  EXPECT_EQ(lease->device(), 0);
}

TEST(LedgerWaitTest, UnhealthyDeviceIsNeverChosenAndUsedAgainOnRecovery) {
  auto m = make_sim_manager({k24GiB, k24GiB}, local_options(8, 0.8));
  ASSERT_NE(m.manager, nullptr);
  ASSERT_TRUE(m.sim->set_healthy(0, false).ok());
  (void)snap(*m.manager);  // read the new health now
  // Best fit would pick device 0 among equals; it is unhealthy, so every lease goes to 1.
  for (int i = 0; i < 20; ++i) {
    auto lease = m->try_acquire(request("j" + std::to_string(i), kGiB));
    ASSERT_TRUE(lease.ok()) << i;
    EXPECT_EQ(lease->device(), 1) << i;
  }
  LeaseRequest pinned = request("pinned", kGiB);
  pinned.device = 0;
  EXPECT_EQ(m->try_acquire(pinned).status().code(), ErrorCode::kResourceExhausted);
  // Device 1 full: nothing fits anywhere while device 0 is down.
  auto fill = m->try_acquire(request("fill", 19 * kGiB));
  ASSERT_TRUE(fill.ok());
  EXPECT_EQ(fill->device(), 1);
  EXPECT_FALSE(m->can_admit(kGiB).value());

  ASSERT_TRUE(m.sim->set_healthy(0, true).ok());
  (void)snap(*m.manager);
  auto back = m->try_acquire(request("back", kGiB));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->device(), 0);
  EXPECT_TRUE(m->try_acquire(pinned).ok());
}

TEST(LedgerWaitTest, BackendFailureMarksEveryDeviceUnhealthyUntilItAnswers) {
  auto m = make_sim_manager({k24GiB, k24GiB});
  ASSERT_NE(m.manager, nullptr);
  auto held = m->try_acquire(request("held", kGiB));
  ASSERT_TRUE(held.ok());
  m.sim->set_backend_failure(true);
  const Snapshot s = snap(*m.manager);
  ASSERT_EQ(s.devices.size(), 2u);
  for (const auto& d : s.devices) {
    EXPECT_FALSE(d.info.healthy);
    EXPECT_NE(d.info.health_reason.find("backend failure"), std::string::npos);
  }
  EXPECT_EQ(s.devices[0].leased_bytes, kGiB);  // the ledger keeps its promises
  EXPECT_EQ(m->try_acquire(request("x", kGiB)).status().code(), ErrorCode::kResourceExhausted);
  EXPECT_TRUE(held->release().ok());  // releasing still works
  m.sim->set_backend_failure(false);
  (void)snap(*m.manager);
  EXPECT_TRUE(m->try_acquire(request("x", kGiB)).ok());
}

TEST(LedgerWaitTest, HigherPriorityWaiterIsServedFirst) {
  auto m = make_sim_manager({k24GiB}, local_options(1, 0.8));
  ASSERT_NE(m.manager, nullptr);
  auto holder = m->try_acquire(request("holder", kGiB));
  ASSERT_TRUE(holder.ok());
  AsyncAcquire low(*m.manager, request("low", kGiB, 0));
  ASSERT_TRUE(queued(*m.manager, "low"));
  AsyncAcquire high(*m.manager, request("high", kGiB, 5));
  ASSERT_TRUE(queued(*m.manager, "high"));
  const Snapshot s = snap(*m.manager);
  ASSERT_EQ(s.queue.size(), 2u);
  EXPECT_EQ(s.queue[0].job_id, "high");
  EXPECT_EQ(s.queue[1].job_id, "low");
  EXPECT_EQ(s.queue[1].position, 1);

  ASSERT_TRUE(holder->release().ok());
  ASSERT_TRUE(high.ended());
  auto h = high.get();
  ASSERT_TRUE(h.ok());
  EXPECT_TRUE(low.still_waiting());
  ASSERT_TRUE(h->release().ok());
  ASSERT_TRUE(low.ended());
  EXPECT_TRUE(low.get().ok());
}

TEST(LedgerWaitTest, ManyWaitersAllServedOnceEach) {
  // 16 threads wait for a one-job ledger; each lease is held briefly. Every request is
  // granted exactly once and the ledger ends empty.
  auto m = make_sim_manager({k24GiB}, local_options(1, 0.8));
  ASSERT_NE(m.manager, nullptr);
  std::atomic<int> granted{0};
  JoiningThreads threads;
  for (int i = 0; i < 16; ++i) {
    threads.spawn([&, i] {
      auto lease = m->acquire(request("w" + std::to_string(i), kGiB), WaitOptions::for_seconds(20));
      if (lease.ok()) ++granted;
    });
  }
  threads.join();
  EXPECT_EQ(granted.load(), 16);
  const Snapshot s = snap(*m.manager);
  EXPECT_EQ(s.stats.jobs_succeeded, 16u);
  EXPECT_EQ(s.stats.peak_active_jobs, 1);
  EXPECT_TRUE(s.leases.empty());
  EXPECT_TRUE(s.queue.empty());
}

}  // namespace
}  // namespace gpumgr
