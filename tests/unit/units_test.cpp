// parse_size() with decimals and the forms it refuses with a reason (issue 11, section 6).
// The integer forms and their errors are covered by SizeTest in bad_input_test.cpp.
#include "gpumgr/units.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace gpumgr {
namespace {

TEST(ParseSizeDecimalTest, DecimalsAreExactAndRoundDownToWholeBytes) {
  const std::vector<std::pair<std::string, std::uint64_t>> cases = {
      {"1.5GiB", 1610612736},
      {"0.5MiB", 512 * kKiB},
      {"1.5", 1536 * kKiB},  // a bare number is MiB
      {"2.000GiB", 2 * kGiB},
      {"0.0", 0},
      {"0.25KiB", 256},
      {"1.5B", 1},               // rounded down
      {"0.1GiB", 107374182},     // 107374182.4
      {"0.3GiB", 322122547},     // 322122547.2
      {"0.29KB", 290},           // 0.29 * 1000 is 289.99999999999994 in double
      {"4.35MB", 4350000},       // 4349999.999999999 in double
      {"1.1TB", 1100000000000},  // 1100000000000.0002 in double
      {"0.001GB", 1000000},      //
      {"12.5GiB", 12 * kGiB + kGiB / 2},
      // One byte in TiB is 2^-40 TiB, 40 decimals exactly; one digit less is not a byte.
      {"0.0000000000009094947017729282379150390625TiB", 1},
      {"0.0000000000009094947017729282379150390624TiB", 0},
      {"1.99999999999999999999999999999999999999999999GiB", 2 * kGiB - 1},
      {"16777215.9999999999999999999999999999999999999999TiB",
       std::numeric_limits<std::uint64_t>::max()},
      {"18446744073709551615.999B", std::numeric_limits<std::uint64_t>::max()},
  };
  for (const auto& [text, bytes] : cases) {
    auto parsed = parse_size(text);
    ASSERT_TRUE(parsed.ok()) << text << ": " << parsed.status().to_string();
    EXPECT_EQ(*parsed, bytes) << text;
  }
}

TEST(ParseSizeDecimalTest, WhatIsRefusedSaysWhy) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"1e3MiB", "bad size '1e3MiB': exponents are not accepted"},
      {"1E3", "exponents are not accepted"},
      {"1.5e3GiB", "exponents are not accepted"},
      {"2e+1GiB", "exponents are not accepted"},
      {"1e-3TiB", "exponents are not accepted"},
      {"1.GiB", "bad size '1.GiB': expected digits after the decimal point"},
      {"1.", "expected digits after the decimal point"},
      {".5GiB", "bad size '.5GiB': expected a non-negative integer or decimal"},
      {"1.5.5GiB", "more than one decimal point"},
      {"-1.5GiB", "non-negative integer"},
      {"1.5 GiB", "unknown unit ' GiB'"},
      {"1,5GiB", "unknown unit ',5GiB'"},
      {"1.5gib", "unknown unit 'gib'"},
      {"1.5Mb", "unknown unit 'Mb'"},
      {"1e", "unknown unit 'e'"},
      {"16777216.0TiB", "too large"},
      {"16777215.99999999999999999999999999999999999999999999TiB1", "unknown unit"},
      {"18446744073709551616.5B", "too large"},
      {"nan", "expected a non-negative integer or decimal"},
      {"inf", "expected a non-negative integer or decimal"},
  };
  for (const auto& [text, message] : cases) {
    auto parsed = parse_size(text);
    ASSERT_FALSE(parsed.ok()) << text << " parsed as " << *parsed;
    EXPECT_EQ(parsed.status().code(), ErrorCode::kInvalidArgument) << text;
    EXPECT_NE(parsed.status().message().find(message), std::string::npos)
        << text << ": " << parsed.status().message() << "\nexpected to contain: " << message;
  }
}

TEST(ParseSizeDecimalTest, JustAboveTheLargestSizeOverflows) {
  // 2^64 - 1 bytes is 16777215 TiB + (2^40 - 1) bytes; one more byte does not fit.
  EXPECT_TRUE(parse_size("18446744073709551615B").ok());
  EXPECT_EQ(parse_size("16777216TiB").status().code(), ErrorCode::kInvalidArgument);
  auto largest = parse_size("16777215.99999999999999999999999999999999999999999999TiB");
  ASSERT_TRUE(largest.ok()) << largest.status().to_string();
  EXPECT_EQ(*largest, std::numeric_limits<std::uint64_t>::max());
  EXPECT_EQ(parse_size("16777215.99999999999999999999999999999999999999999999TiB1").status().code(),
            ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace gpumgr
