// UTF-8 validity, the one check for prompts, stop strings and streamed text.
#pragma once

#include <cstddef>
#include <string>

namespace llava {

// A character's first byte (RFC 3629's table): how many bytes follow it (0: ASCII) and the
// range of the next one (no overlong forms, surrogates or code points past U+10FFFF; the
// bytes after it are 0x80-0xBF).
struct Utf8Lead {
  int more = 0;
  unsigned char low = 0x80, high = 0xBF;
};
// False where `c` starts no character (a continuation byte, 0xC0, 0xC1, 0xF5 and up).
inline bool utf8_lead(unsigned char c, Utf8Lead& out) {
  out = Utf8Lead{};
  if (c < 0x80) return true;
  if (c >= 0xC2 && c <= 0xDF) {
    out.more = 1;
  } else if (c >= 0xE0 && c <= 0xEF) {
    out.more = 2;
    if (c == 0xE0) out.low = 0xA0;
    if (c == 0xED) out.high = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    out.more = 3;
    if (c == 0xF0) out.low = 0x90;
    if (c == 0xF4) out.high = 0x8F;
  } else {
    return false;
  }
  return true;
}

// The byte offset of the first ill-formed sequence (overlong forms, surrogates, code points
// past U+10FFFF, truncated or stray continuation bytes), or npos when `text` is well-formed.
size_t utf8_error_offset(const std::string& text);

// `text` with each ill-formed byte replaced by U+FFFD (a token's bytes that are part of a
// character, shown as JSON can carry them).
std::string utf8_lossy(const std::string& text);

}  // namespace llava
