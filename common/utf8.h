// UTF-8 validity, the one check for prompts, stop strings and streamed text.
#pragma once

#include <cstddef>
#include <string>

namespace llava {

// The byte offset of the first ill-formed sequence (overlong forms, surrogates, code points
// past U+10FFFF, truncated or stray continuation bytes), or npos when `text` is well-formed.
size_t utf8_error_offset(const std::string& text);

// `text` with each ill-formed byte replaced by U+FFFD (a token's bytes that are part of a
// character, shown as JSON can carry them).
std::string utf8_lossy(const std::string& text);

}  // namespace llava
