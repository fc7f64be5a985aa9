// Stress: 8 threads x 100k non-blocking acquire/release cycles through one Manager, with random
// failures. Afterwards nothing is leased and the counters add up. GPUMGR_STRESS_SCALE (a
// positive number, default 1) scales the iterations, so that sanitizer builds in CI can run a
// fraction of them.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>

#include "test_util.h"

namespace gpumgr {
namespace {

using testing::local_options;
using testing::make_sim_manager;
using testing::snap;

int iterations_per_thread() {
  double scale = 1.0;
  if (const char* env = std::getenv("GPUMGR_STRESS_SCALE"); env != nullptr) {
    char* end = nullptr;
    const double parsed = std::strtod(env, &end);
    if (end != env && parsed > 0) scale = parsed;
  }
  const double n = 100000.0 * scale;
  return n < 1 ? 1 : static_cast<int>(n);
}

TEST(StressTest, EightThreadsAcquireAndReleaseWithRandomFailures) {
  constexpr int kThreads = 8;
  const int iterations = iterations_per_thread();
  // Four 16 GiB devices, at most 3 jobs: 8 threads contend for both the job limit and memory
  // (sizes up to 8 GiB, capacity 12.8 GiB a device), so all three outcomes happen.
  auto m = make_sim_manager({16 * kGiB, 16 * kGiB, 16 * kGiB, 16 * kGiB}, local_options(3, 0.8));
  ASSERT_NE(m.manager, nullptr);
  std::atomic<std::uint64_t> granted{0}, failed{0}, succeeded{0}, rejected{0}, other{0};
  testing::JoiningThreads threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.spawn([&, t] {
      std::mt19937 rng(static_cast<unsigned>(1234 + t));
      std::uniform_int_distribution<int> size_mib(1, 8192);
      std::uniform_int_distribution<int> percent(0, 99);
      const std::string prefix = "t" + std::to_string(t) + "-";
      for (int i = 0; i < iterations; ++i) {
        LeaseRequest r;
        r.job_id = prefix + std::to_string(i);
        r.bytes = static_cast<std::uint64_t>(size_mib(rng)) * kMiB;
        auto lease = m->try_acquire(r);
        if (!lease.ok()) {
          if (lease.status().code() == ErrorCode::kResourceExhausted) {
            ++rejected;
          } else {
            ++other;
          }
          continue;
        }
        ++granted;
        const bool fail = percent(rng) < 10;
        if (fail) {
          lease->mark_failed();
          ++failed;
        } else {
          ++succeeded;
        }
        // Half released explicitly (and again, idempotently), half by the destructor.
        if (i % 2 == 0) {
          if (!lease->release().ok() || !lease->release().ok()) ++other;
        }
      }
    });
  }
  threads.join();

  const std::uint64_t attempts = static_cast<std::uint64_t>(kThreads) * iterations;
  EXPECT_EQ(other.load(), 0u);
  EXPECT_EQ(granted + rejected, attempts);
  EXPECT_GT(granted.load(), 0u);
  EXPECT_GT(failed.load(), 0u);

  const Snapshot s = snap(*m.manager);
  EXPECT_TRUE(s.leases.empty());
  EXPECT_TRUE(s.queue.empty());
  for (const auto& d : s.devices) {
    EXPECT_EQ(d.leased_bytes, 0u);
    EXPECT_EQ(d.active_leases, 0);
    EXPECT_LE(d.peak_leased_bytes, d.capacity_bytes);
  }
  EXPECT_EQ(s.stats.jobs_succeeded, succeeded.load());
  EXPECT_EQ(s.stats.jobs_failed, failed.load());
  EXPECT_EQ(s.stats.jobs_succeeded + s.stats.jobs_failed, granted.load());
  EXPECT_EQ(s.stats.jobs_rejected, rejected.load());
  EXPECT_EQ(s.stats.active_jobs, 0);
  EXPECT_LE(s.stats.peak_active_jobs, 3);
  EXPECT_GE(s.stats.peak_active_jobs, 1);
  EXPECT_EQ(s.stats.hold_seconds.count, granted.load());
  EXPECT_EQ(s.stats.wait_seconds.count, granted.load());
}

}  // namespace
}  // namespace gpumgr
