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
    return InvalidArgument("empty size: expected a number with a unit such as 24GiB or 1.5GiB");
  const auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
  std::size_t digits = 0;
  while (digits < text.size() && is_digit(text[digits])) ++digits;
  if (digits == 0) {
    return InvalidArgument("bad size " + quoted +
                           ": expected a non-negative integer or decimal (24, 1.5) with an "
                           "optional unit (B KiB MiB GiB TiB KB MB GB TB; none means MiB)");
  }
  std::uint64_t number = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + digits, number);
  if (ec != std::errc() || ptr != text.data() + digits) {
    return InvalidArgument("bad size " + quoted + ": the number is too large");
  }
  // The fraction's digits, kept as text: the bytes they add are computed exactly below.
  std::string_view fraction;
  std::size_t end = digits;
  if (end < text.size() && text[end] == '.') {
    std::size_t last = end + 1;
    while (last < text.size() && is_digit(text[last])) ++last;
    fraction = text.substr(end + 1, last - end - 1);
    if (fraction.empty()) {
      return InvalidArgument("bad size " + quoted +
                             ": expected digits after the decimal point, as in 1.5GiB");
    }
    end = last;
  }
  std::string_view suffix = text.substr(end);
  if (suffix.size() >= 2 && (suffix[0] == 'e' || suffix[0] == 'E') &&
      (is_digit(suffix[1]) || suffix[1] == '+' || suffix[1] == '-')) {
    return InvalidArgument("bad size " + quoted +
                           ": exponents are not accepted; write the digits out, as in 1000MiB");
  }
  if (!suffix.empty() && suffix[0] == '.') {
    return InvalidArgument("bad size " + quoted + ": more than one decimal point");
  }
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
  // floor(factor * 0.d1d2...dn), exactly, for any number of digits: from the last digit
  // back, part = floor((d_i * factor + part) / 10). Flooring at each step gives the same
  // result as flooring once at the end (the dropped remainder is always below one tenth of
  // a unit of the next step), and every value stays below 10 * factor, far from overflow.
  std::uint64_t part = 0;
  for (auto it = fraction.rbegin(); it != fraction.rend(); ++it) {
    part = (static_cast<std::uint64_t>(*it - '0') * factor + part) / 10;
  }
  constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
  if (number > kMax / factor || number * factor > kMax - part) {
    return InvalidArgument("bad size " + quoted + ": too large");
  }
  return number * factor + part;
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
