#include "gpumgr/units.h"

#include <array>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>

namespace gpumgr {
namespace {
struct Unit {
  std::string_view suffix;
  std::uint64_t factor;
};
constexpr std::array<Unit, 9> kUnits{{
    {"B", 1},
    {"KiB", kKiB},
    {"MiB", kMiB},
    {"GiB", kGiB},
    {"TiB", kTiB},
    {"KB", 1000ULL},
    {"MB", 1000ULL * 1000},
    {"GB", 1000ULL * 1000 * 1000},
    {"TB", 1000ULL * 1000 * 1000 * 1000},
}};
}  // namespace

StatusOr<std::uint64_t> parse_size(std::string_view text) {
  // Built by appending: g++ 12's -Wrestrict misfires on "'" + std::string(...) at -O3.
  std::string quoted(1, '\'');
  quoted.append(text).push_back('\'');
  if (text.empty())
    return InvalidArgument("empty size: expected an integer with a unit such as 24GiB");
  std::size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  if (digits == 0) {
    return InvalidArgument("bad size " + quoted +
                           ": expected a non-negative integer with an optional unit "
                           "(B KiB MiB GiB TiB KB MB GB TB; none means MiB)");
  }
  std::uint64_t number = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + digits, number);
  if (ec != std::errc() || ptr != text.data() + digits) {
    return InvalidArgument("bad size " + quoted + ": the number is too large");
  }
  std::string_view suffix = text.substr(digits);
  std::uint64_t factor = kMiB;
  if (!suffix.empty()) {
    factor = 0;
    for (const auto& unit : kUnits) {
      if (unit.suffix == suffix) factor = unit.factor;
    }
    if (factor == 0) {
      return InvalidArgument("bad size " + quoted + ": unknown unit '" + std::string(suffix) +
                             "' (use B KiB MiB GiB TiB KB MB GB TB; none means MiB)");
    }
  }
  if (number > std::numeric_limits<std::uint64_t>::max() / factor) {
    return InvalidArgument("bad size " + quoted + ": too large");
  }
  return number * factor;
}

std::string format_bytes(std::uint64_t bytes) {
  constexpr std::array<std::string_view, 5> kNames{"B", "KiB", "MiB", "GiB", "TiB"};
  std::size_t unit = 0;
  std::uint64_t scale = 1;
  while (unit + 1 < kNames.size() && bytes >= scale * 1024) {
    scale *= 1024;
    ++unit;
  }
  char buf[48];
  if (bytes % scale == 0) {
    std::snprintf(buf, sizeof buf, "%llu %s", static_cast<unsigned long long>(bytes / scale),
                  kNames[unit].data());
  } else {
    std::snprintf(buf, sizeof buf, "%.1f %s",
                  static_cast<double>(bytes) / static_cast<double>(scale), kNames[unit].data());
  }
  return buf;
}

}  // namespace gpumgr
