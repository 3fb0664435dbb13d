// Text helpers the tokenizer.json steps share, each matching what the Rust `tokenizers`
// library sees: UTF-8 code points (a bad byte reads as one character), the Unicode classes
// of its regexes (\s, \w), String::from_utf8's validity; replacing and prefix tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace llava::hf {

// The code point at `pos` and its length in bytes (a bad sequence reads as one byte).
uint32_t code_point_at(const std::string& s, size_t pos, size_t* length);
// The code point that ends s[0, end), and where it starts.
uint32_t code_point_before(const std::string& s, size_t end, size_t* start);
// What Rust's String::from_utf8 accepts: no overlong forms, no surrogates, nothing past U+10FFFF.
bool valid_utf8(const std::string& s);
// Unicode White_Space, what Rust's regex `\s` matches.
bool is_whitespace(uint32_t cp);
// Rust's regex `\w` (Unicode), approximated beyond ASCII (see hf_text.cpp).
bool is_word_char(uint32_t cp);

void replace_all(std::string& s, const std::string& from, const std::string& to);
bool starts_with(const std::string& s, const std::string& prefix);

}  // namespace llava::hf
