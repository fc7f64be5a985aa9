// util/fast_clock: readings stay with std::chrono::steady_clock, from one thread and from
// several at once, before and after the TSC's rate has been measured.
#include "util/fast_clock.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"
#include "util/small_file.h"

namespace gpumgr {
namespace {

std::int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A reading taken between two steady_clock reads must lie between them, give or take this
// much: the conversion's error over one anchoring interval (microseconds at worst).
constexpr std::int64_t kToleranceNs = 200'000;

// Reads for `duration`, checking each reading against steady_clock; returns how many
// readings fell outside and the largest step back between successive readings.
struct Check {
  int outside = 0;
  int readings = 0;
  std::int64_t largest_step_back = 0;
};

Check check_for(std::chrono::milliseconds duration) {
  Check c;
  const std::int64_t end = steady_ns() + duration.count() * 1'000'000;
  std::int64_t last = 0;
  for (std::int64_t before = steady_ns(); before < end; before = steady_ns()) {
    const std::int64_t reading = fast_steady_ns();
    const std::int64_t after = steady_ns();
    if (reading < before - kToleranceNs || reading > after + kToleranceNs) ++c.outside;
    if (last != 0 && reading < last)
      c.largest_step_back = std::max(c.largest_step_back, last - reading);
    last = reading;
    ++c.readings;
  }
  return c;
}

TEST(FastClock, ReadsTheTscExactlyWhereTheKernelKeepsTimeWithIt) {
  const auto source =
      read_small_file("/sys/devices/system/clocksource/clocksource0/current_clocksource");
  const char* env = std::getenv("GPUMGR_CLOCK");
  bool expect_tsc =
      source.has_value() && *source == "tsc\n" && !(env != nullptr && std::string(env) == "steady");
#if !defined(__x86_64__)
  expect_tsc = false;
#endif
  EXPECT_EQ(fast_clock_source(), expect_tsc ? "tsc" : "steady_clock");
}

TEST(FastClock, StaysWithTheSteadyClockAcrossItsAnchorings) {
  // 400 ms spans the first measurement of the rate (100 ms) and several re-anchorings.
  const Check c = check_for(std::chrono::milliseconds(400));
  EXPECT_GT(c.readings, 1000);
  EXPECT_EQ(c.outside, 0) << "of " << c.readings << " readings";
  EXPECT_LE(c.largest_step_back, kToleranceNs);
}

TEST(FastClock, StaysWithTheSteadyClockFromManyThreadsAtOnce) {
  std::vector<Check> checks(4);
  testing::JoiningThreads threads;
  for (auto& c : checks) {
    threads.spawn([&c] { c = check_for(std::chrono::milliseconds(300)); });
  }
  threads.join();
  for (const Check& c : checks) {
    EXPECT_GT(c.readings, 100);
    EXPECT_EQ(c.outside, 0) << "of " << c.readings << " readings";
  }
}

TEST(FastClock, MeasuresSleepsLikeTheSteadyClock) {
  (void)check_for(std::chrono::milliseconds(150));  // past the first measurement of the rate
  for (int i = 0; i < 5; ++i) {
    const std::int64_t fast_before = fast_steady_ns();
    const std::int64_t steady_before = steady_ns();
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    const std::int64_t fast_after = fast_steady_ns();
    const std::int64_t steady_after = steady_ns();
    EXPECT_NEAR(static_cast<double>(fast_after - fast_before),
                static_cast<double>(steady_after - steady_before), 2.0 * kToleranceNs);
  }
}

}  // namespace
}  // namespace gpumgr
