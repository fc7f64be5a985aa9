// Text that reaches a terminal: client-chosen strings (job ids, commands, kinds) made safe to
// print, and their width in terminal columns. A job id such as "\x1b]0;owned\x07" or a
// command with "\x1b[2J" must not retitle or clear the terminal of whoever runs
// `gpumgr status`, so every such string goes through terminal_safe() before it is printed.
// Pure functions: any thread may call them.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace gpumgr {

// `text` with everything a terminal could act on replaced by visible, printable ASCII:
//   - tab, newline and carriage return become `\t`, `\n`, `\r`;
//   - other C0 controls (0x00-0x1f) and DEL (0x7f) become `\xHH` (ESC is `\x1b`);
//   - C1 controls (U+0080..U+009F, in UTF-8 0xc2 0x80..0x9f), the line and paragraph
//     separators (U+2028, U+2029) and the bidirectional overrides and isolates
//     (U+202A..U+202E, U+2066..U+2069, which can make text read other than it is) become
//     `\uHHHH`;
//   - every byte that is not part of valid UTF-8 (a stray continuation byte, a truncated or
//     overlong sequence, a surrogate, a code point above U+10FFFF, 0xc0, 0xc1, 0xf5-0xff)
//     becomes `\xHH`, one escape per byte.
// Valid printable UTF-8 ("模型-1", "café") is kept byte for byte. Backslashes are kept as
// they are: the result is for reading, not for parsing back (the JSON output is exact).
std::string terminal_safe(std::string_view text);

// Columns `text` takes on a terminal, for text that terminal_safe() left unchanged: one per
// code point, two for East Asian wide and fullwidth characters, none for combining marks.
std::size_t terminal_columns(std::string_view text);

// The longest prefix of `text` (safe text, as above) that takes at most `columns` columns,
// cut only between code points.
std::string_view terminal_prefix(std::string_view text, std::size_t columns);

}  // namespace gpumgr
