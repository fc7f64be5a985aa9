// Memory sizes as users write them ("24GiB", "512MB", "6000") and as we print them.
// Pure functions: any thread may call them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "gpumgr/status.h"

namespace gpumgr {

inline constexpr std::uint64_t kKiB = 1024;
inline constexpr std::uint64_t kMiB = 1024 * kKiB;
inline constexpr std::uint64_t kGiB = 1024 * kMiB;
inline constexpr std::uint64_t kTiB = 1024 * kGiB;

// Parses "<number><unit>" with unit one of B KiB MiB GiB TiB (binary) or KB MB GB TB
// (decimal); a bare number means MiB. The number is an integer or a decimal with digits on
// both sides of the point ("1.5GiB" = 1610612736 bytes, "0.5MiB", "1.5" = 1.5 MiB), computed
// exactly in integers (no floating point: "0.29KB" is 290 bytes) and rounded down to whole
// bytes. Exponents ("1e3MiB"), signs and spaces are refused. Units are case-sensitive except
// that "b" is not accepted, so that "Mb" (megabits) is never mistaken for bytes. Zero is
// accepted here; callers that need a positive size check for it. Overflow and anything else
// is an error that says what is wrong.
StatusOr<std::uint64_t> parse_size(std::string_view text);

// "19.2 GiB", "512 MiB", "100 B": binary units, one decimal where the value is not whole.
std::string format_bytes(std::uint64_t bytes);

}  // namespace gpumgr
