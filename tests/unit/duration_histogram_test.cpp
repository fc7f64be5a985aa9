// The ledger's wait and hold time distributions: integer-nanosecond buckets on the hot path,
// the public cumulative form in seconds for snapshots and /metrics.
#include <gtest/gtest.h>

#include "core/local_ledger.h"

namespace gpumgr::core {
namespace {

constexpr TimeNs kMs = 1'000'000;

TEST(DurationHistogram, EachDurationLandsInTheFirstBucketWhoseBoundHoldsIt) {
  DurationHistogram h;
  h.observe(5 * kMs);      // exactly the first bound (0.005 s): le="0.005"
  h.observe(5 * kMs + 1);  // just above it: le="0.01"
  h.observe(0);
  h.observe(-3);                  // a clock step back: counted as 0
  h.observe(3600'000 * kMs);      // exactly the last bound (1 h)
  h.observe(2 * 3600'000 * kMs);  // beyond every bound: +Inf only
  const Histogram out = h.to_histogram();
  ASSERT_EQ(out.bounds.size(), 16u);
  ASSERT_EQ(out.counts.size(), 17u);
  EXPECT_DOUBLE_EQ(out.bounds.front(), 0.005);
  EXPECT_DOUBLE_EQ(out.bounds.back(), 3600);
  EXPECT_EQ(out.counts[0], 3u);  // 0, -3 -> 0, and 5 ms
  EXPECT_EQ(out.counts[1], 4u);  // cumulative: + 5 ms + 1 ns
  EXPECT_EQ(out.counts[14], 4u);
  EXPECT_EQ(out.counts[15], 5u);  // + 1 h
  EXPECT_EQ(out.counts[16], 6u);  // + 2 h
  EXPECT_EQ(out.count, 6u);
  EXPECT_DOUBLE_EQ(out.min, 0);
  EXPECT_DOUBLE_EQ(out.max, 7200);
  EXPECT_NEAR(out.sum, 0.005 + 0.005000001 + 3600 + 7200, 1e-9);
}

TEST(DurationHistogram, AnEmptyOneReportsZeros) {
  const Histogram out = DurationHistogram().to_histogram();
  EXPECT_EQ(out.count, 0u);
  EXPECT_EQ(out.counts.back(), 0u);
  EXPECT_DOUBLE_EQ(out.min, 0);
  EXPECT_DOUBLE_EQ(out.max, 0);
  EXPECT_DOUBLE_EQ(out.mean(), 0);
}

TEST(DurationHistogram, MinimumAndMaximumFollowTheObservations) {
  DurationHistogram h;
  h.observe(40 * kMs);
  h.observe(7 * kMs);
  h.observe(90 * kMs);
  const Histogram out = h.to_histogram();
  EXPECT_DOUBLE_EQ(out.min, 0.007);
  EXPECT_DOUBLE_EQ(out.max, 0.09);
  EXPECT_NEAR(out.mean(), 0.137 / 3, 1e-12);
}

TEST(DurationHistogram, SumsExactlyOverManyObservations) {
  // A thousand milliseconds are one second: a floating-point running sum would be off in
  // the last digits (1.0000000000000007).
  DurationHistogram h;
  for (int i = 0; i < 1000; ++i) h.observe(kMs);
  EXPECT_EQ(h.to_histogram().sum, 1.0);  // exactly: EXPECT_DOUBLE_EQ would allow 4 ulps
  h.observe(999'999'999);
  h.observe(1);
  EXPECT_EQ(h.to_histogram().sum, 2.0);
}

}  // namespace
}  // namespace gpumgr::core
