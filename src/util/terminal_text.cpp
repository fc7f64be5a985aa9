#include "util/terminal_text.h"

#include <cstdint>

namespace gpumgr {
namespace {

// One UTF-8 sequence at the start of `text`: its code point and length, or length 0 where
// the bytes there are not valid UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing
// above U+10FFFF).
struct Decoded {
  char32_t code_point = 0;
  std::size_t length = 0;
};

Decoded decode(std::string_view text) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char b0 = byte(0);
  if (b0 < 0x80) return {b0, 1};
  std::size_t length = 0;
  unsigned char lo = 0x80;  // the range the second byte must lie in
  unsigned char hi = 0xbf;
  char32_t cp = 0;
  if (b0 >= 0xc2 && b0 <= 0xdf) {
    length = 2;
    cp = b0 & 0x1f;
  } else if (b0 >= 0xe0 && b0 <= 0xef) {
    length = 3;
    cp = b0 & 0x0f;
    if (b0 == 0xe0) lo = 0xa0;  // overlong below U+0800
    if (b0 == 0xed) hi = 0x9f;  // surrogates U+D800..U+DFFF
  } else if (b0 >= 0xf0 && b0 <= 0xf4) {
    length = 4;
    cp = b0 & 0x07;
    if (b0 == 0xf0) lo = 0x90;  // overlong below U+10000
    if (b0 == 0xf4) hi = 0x8f;  // above U+10FFFF
  } else {
    return {};  // a continuation byte, 0xc0, 0xc1 or 0xf5..0xff
  }
  if (text.size() < length) return {};
  for (std::size_t i = 1; i < length; ++i) {
    const unsigned char b = byte(i);
    if (i == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xbf)) return {};
    cp = (cp << 6) | (b & 0x3f);
  }
  return {cp, length};
}

bool unsafe_code_point(char32_t cp) {
  return cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029 ||
         (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069);
}

void append_hex(std::string& out, const char* prefix, std::uint32_t value, int digits) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += prefix;
  for (int shift = 4 * (digits - 1); shift >= 0; shift -= 4) out += kHex[(value >> shift) & 0xf];
}

std::size_t columns_of(char32_t cp) {
  struct Range {
    char32_t first, last;
  };
  static constexpr Range kZero[] = {
      {0x0300, 0x036f}, {0x0483, 0x0489}, {0x0591, 0x05bd}, {0x1ab0, 0x1aff}, {0x1dc0, 0x1dff},
      {0x200b, 0x200f}, {0x20d0, 0x20ff}, {0xfe00, 0xfe0f}, {0xfe20, 0xfe2f}, {0xfeff, 0xfeff},
  };
  static constexpr Range kWide[] = {
      {0x1100, 0x115f},   {0x2e80, 0x303e},   {0x3041, 0x33ff},   {0x3400, 0x4dbf},
      {0x4e00, 0x9fff},   {0xa000, 0xa4cf},   {0xac00, 0xd7a3},   {0xf900, 0xfaff},
      {0xfe30, 0xfe4f},   {0xff00, 0xff60},   {0xffe0, 0xffe6},   {0x1f300, 0x1f64f},
      {0x1f900, 0x1f9ff}, {0x20000, 0x2fffd}, {0x30000, 0x3fffd},
  };
  if (cp < 0x300) return 1;
  for (const Range& r : kZero) {
    if (cp >= r.first && cp <= r.last) return 0;
  }
  for (const Range& r : kWide) {
    if (cp >= r.first && cp <= r.last) return 2;
  }
  return 1;
}

}  // namespace

std::string terminal_safe(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  while (!text.empty()) {
    const Decoded d = decode(text);
    if (d.length == 0) {
      append_hex(out, "\\x", static_cast<unsigned char>(text.front()), 2);
      text.remove_prefix(1);
      continue;
    }
    const char32_t cp = d.code_point;
    if (!unsafe_code_point(cp)) {
      out.append(text.data(), d.length);
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (cp < 0x80) {
      append_hex(out, "\\x", static_cast<std::uint32_t>(cp), 2);
    } else {
      append_hex(out, "\\u", static_cast<std::uint32_t>(cp), 4);
    }
    text.remove_prefix(d.length);
  }
  return out;
}

std::size_t terminal_columns(std::string_view text) {
  std::size_t columns = 0;
  while (!text.empty()) {
    const Decoded d = decode(text);
    columns += d.length == 0 ? 1 : columns_of(d.code_point);
    text.remove_prefix(d.length == 0 ? 1 : d.length);
  }
  return columns;
}

std::string_view terminal_prefix(std::string_view text, std::size_t columns) {
  std::size_t used = 0;
  std::size_t end = 0;
  while (end < text.size()) {
    const Decoded d = decode(text.substr(end));
    const std::size_t length = d.length == 0 ? 1 : d.length;
    const std::size_t width = d.length == 0 ? 1 : columns_of(d.code_point);
    if (used + width > columns) break;
    used += width;
    end += length;
  }
  // Combining marks that follow belong to the last character kept.
  while (end < text.size()) {
    const Decoded d = decode(text.substr(end));
    if (d.length == 0 || columns_of(d.code_point) != 0) break;
    end += d.length;
  }
  return text.substr(0, end);
}

}  // namespace gpumgr
