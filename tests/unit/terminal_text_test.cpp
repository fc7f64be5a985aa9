// terminal_safe(): what client-chosen text (job ids, commands, kinds) becomes before it is
// printed to a terminal, and the column arithmetic the views use to lay it out.
#include "util/terminal_text.h"

#include <gtest/gtest.h>

#include <string>

namespace gpumgr {
namespace {

using namespace std::string_literals;

// No byte a terminal acts on: C0 controls, DEL, and the UTF-8 forms of C1 controls.
bool printable(const std::string& text) {
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c == 0x7f) return false;
    if (c == 0xc2 && i + 1 < text.size()) {
      const auto next = static_cast<unsigned char>(text[i + 1]);
      if (next >= 0x80 && next <= 0x9f) return false;
    }
  }
  return true;
}

TEST(TerminalSafeTest, PlainAndUtf8TextIsKeptByteForByte) {
  EXPECT_EQ(terminal_safe("python worker.py --steps 30"), "python worker.py --steps 30");
  EXPECT_EQ(terminal_safe("模型-1 café ü 🎨"), "模型-1 café ü 🎨");
  EXPECT_EQ(terminal_safe(R"(a\x1b "quoted" \\)"), R"(a\x1b "quoted" \\)");  // not re-escaped
  EXPECT_EQ(terminal_safe(""), "");
}

TEST(TerminalSafeTest, EscapeSequencesBecomeVisible) {
  // An OSC that retitles the terminal, then a CSI that clears it.
  const std::string attack = "\x1b]0;owned\x07\x1b[2J";
  EXPECT_EQ(terminal_safe(attack), R"(\x1b]0;owned\x07\x1b[2J)");
  EXPECT_TRUE(printable(terminal_safe(attack)));
  EXPECT_EQ(terminal_safe("\x1b"
                          "P+q\x1b\\"),
            R"(\x1bP+q\x1b\)");  // DCS ... ST
}

TEST(TerminalSafeTest, WhitespaceControlsHaveShortEscapes) {
  EXPECT_EQ(terminal_safe("a\tb\nc\rd"), R"(a\tb\nc\rd)");
  EXPECT_EQ(terminal_safe("bell\a"), R"(bell\x07)");
  EXPECT_EQ(terminal_safe("nul"s + '\0' + "x"), R"(nul\x00x)");
  EXPECT_EQ(terminal_safe("\x01\x1f\x7f"), R"(\x01\x1f\x7f)");
  EXPECT_EQ(terminal_safe("\b\f\v"), R"(\x08\x0c\x0b)");
}

TEST(TerminalSafeTest, C1ControlsAsUtf8AreEscaped) {
  // U+0080..U+009F: 0xc2 0x80..0x9f. U+009B is CSI on terminals that take 8-bit controls.
  EXPECT_EQ(terminal_safe("\xc2\x80"), R"(\u0080)");
  EXPECT_EQ(terminal_safe("a\xc2\x9b"
                          "2Jb"),
            R"(a\u009b2Jb)");
  EXPECT_EQ(terminal_safe("\xc2\x9f"), R"(\u009f)");
  // Just outside the range: U+00A0 (no-break space) and U+007E are text.
  EXPECT_EQ(terminal_safe("\xc2\xa0~"), "\xc2\xa0~");
}

TEST(TerminalSafeTest, SeparatorsAndBidiOverridesAreEscaped) {
  EXPECT_EQ(terminal_safe("a\u2028b\u2029"), R"(a\u2028b\u2029)");
  EXPECT_EQ(terminal_safe("evil\u202etxt.sh"), R"(evil\u202etxt.sh)");
  EXPECT_EQ(terminal_safe("\u2066\u2069\u202a"), R"(\u2066\u2069\u202a)");
  EXPECT_EQ(terminal_safe("\u2027\u2030"), "\u2027\u2030");  // neighbours are text
}

TEST(TerminalSafeTest, InvalidUtf8BytesAreEscapedOneByOne) {
  EXPECT_EQ(terminal_safe("\xff"), R"(\xff)");
  EXPECT_EQ(terminal_safe("a\x80z"), R"(a\x80z)");      // a stray continuation byte
  EXPECT_EQ(terminal_safe("\xe6\xa8"), R"(\xe6\xa8)");  // 模 cut short
  EXPECT_EQ(terminal_safe("\xe6\xa8"
                          "A"),
            R"(\xe6\xa8A)");                                            // ... and followed by text
  EXPECT_EQ(terminal_safe("\xc0\x9b"), R"(\xc0\x9b)");                  // overlong ESC-ish
  EXPECT_EQ(terminal_safe("\xe0\x80\x9b"), R"(\xe0\x80\x9b)");          // overlong, 3 bytes
  EXPECT_EQ(terminal_safe("\xed\xa0\x80"), R"(\xed\xa0\x80)");          // a surrogate
  EXPECT_EQ(terminal_safe("\xf4\x90\x80\x80"), R"(\xf4\x90\x80\x80)");  // above U+10FFFF
  EXPECT_EQ(terminal_safe("\xf5\x80"), R"(\xf5\x80)");
  // The largest valid code point is text.
  EXPECT_EQ(terminal_safe("\xf4\x8f\xbf\xbf"), "\xf4\x8f\xbf\xbf");
}

TEST(TerminalSafeTest, EveryByteValueAloneComesOutPrintable) {
  for (int b = 0; b < 256; ++b) {
    const std::string one(1, static_cast<char>(b));
    const std::string out = terminal_safe(one);
    EXPECT_TRUE(printable(out)) << b;
    if (b >= 0x20 && b < 0x7f) {
      EXPECT_EQ(out, one) << b;
    } else {
      const bool short_escape = b == '\t' || b == '\n' || b == '\r';
      EXPECT_EQ(out.size(), short_escape ? 2u : 4u) << b;  // \t, \n, \r or \xHH
      EXPECT_EQ(out[0], '\\') << b;
    }
  }
}

TEST(TerminalColumnsTest, CountsCharactersNotBytes) {
  EXPECT_EQ(terminal_columns("abc"), 3u);
  EXPECT_EQ(terminal_columns("café"), 4u);
  EXPECT_EQ(terminal_columns("模型-1"), 6u);   // two wide characters
  EXPECT_EQ(terminal_columns("e\u0301"), 1u);  // e and a combining acute accent
  EXPECT_EQ(terminal_columns(""), 0u);
}

TEST(TerminalColumnsTest, PrefixCutsBetweenCharacters) {
  EXPECT_EQ(terminal_prefix("abcdef", 4), "abcd");
  EXPECT_EQ(terminal_prefix("café au lait", 4), "café");
  EXPECT_EQ(terminal_prefix("模型-1", 3), "模");  // the second wide one would need 2 more
  EXPECT_EQ(terminal_prefix("模型-1", 4), "模型");
  EXPECT_EQ(terminal_prefix("e\u0301x", 1), "e\u0301");  // the accent stays with its letter
  EXPECT_EQ(terminal_prefix("abc", 10), "abc");
  EXPECT_EQ(terminal_prefix("abc", 0), "");
}

}  // namespace
}  // namespace gpumgr
