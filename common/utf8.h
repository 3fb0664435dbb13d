// UTF-8 validity, the one check for prompts, stop strings and streamed text.
#pragma once

#include <cstddef>
#include <string>

namespace llava {

// The byte offset of the first ill-formed sequence (overlong forms, surrogates, code points
// past U+10FFFF, truncated or stray continuation bytes), or npos when `text` is well-formed.
size_t utf8_error_offset(const std::string& text);

}  // namespace llava
