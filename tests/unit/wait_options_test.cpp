// WaitOptions::for_seconds: every double gives a deadline the clock can hold. 1e300 s used to
// overflow the conversion to the clock's nanoseconds (undefined behaviour; UBSan reports it,
// and in practice the deadline wrapped into the past).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <limits>

#include "gpumgr/ledger.h"

namespace gpumgr {
namespace {

double seconds_from_now(const WaitOptions& w) {
  return std::chrono::duration<double>(*w.deadline - std::chrono::steady_clock::now()).count();
}

TEST(WaitOptionsTest, HugeTimeoutsAreThirtyOneYearsNotAnOverflow) {
  for (const double s : {1e9, 9.3e9, 1e300, std::numeric_limits<double>::max()}) {
    const WaitOptions w = WaitOptions::for_seconds(s);
    ASSERT_TRUE(w.deadline.has_value()) << s;
    EXPECT_NEAR(seconds_from_now(w), 1e9, 10.0) << s;
  }
}

TEST(WaitOptionsTest, NegativeIsNowAndNaNOrInfinityIsNoDeadline) {
  const WaitOptions past = WaitOptions::for_seconds(-5);
  ASSERT_TRUE(past.deadline.has_value());
  EXPECT_NEAR(seconds_from_now(past), 0.0, 1.0);
  EXPECT_NEAR(seconds_from_now(WaitOptions::for_seconds(2.5)), 2.5, 1.0);
  EXPECT_FALSE(WaitOptions::for_seconds(std::nan("")).deadline.has_value());
  EXPECT_FALSE(WaitOptions::for_seconds(std::numeric_limits<double>::infinity()).deadline);
}

}  // namespace
}  // namespace gpumgr
