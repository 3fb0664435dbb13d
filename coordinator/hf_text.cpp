// UTF-8 and Unicode classes as the Rust tokenizers library sees them (see hf_text.h).
#include "coordinator/hf_text.h"

#include <cctype>

#include "common/utf8.h"

namespace llava::hf {

namespace {

size_t utf8_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 6) return 2;
  if ((lead >> 4) == 14) return 3;
  if ((lead >> 3) == 30) return 4;
  return 1;  // a stray continuation byte: one "character" of its own
}

}  // namespace

uint32_t code_point_at(const std::string& s, size_t pos, size_t* length) {
  const auto lead = static_cast<unsigned char>(s[pos]);
  size_t n = utf8_length(lead);
  if (pos + n > s.size()) n = 1;
  *length = n;
  if (n == 1) return lead;
  uint32_t cp = lead & (0x7f >> n);
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[pos + k]) & 0x3f);
  return cp;
}

bool valid_utf8(const std::string& s) {
  return utf8_error_offset(s) == std::string::npos;
}

bool is_whitespace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0d) || cp == 0x20 || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f ||
         cp == 0x205f || cp == 0x3000;
}

// Rust's regex `\w` (Unicode): exact for ASCII; beyond it, anything that is not white space
// or in the general punctuation and CJK punctuation blocks counts as a word character.
bool is_word_char(uint32_t cp) {
  if (cp < 0x80) return std::isalnum(static_cast<int>(cp)) || cp == '_';
  if (is_whitespace(cp)) return false;
  if (cp >= 0x2000 && cp <= 0x206f) return false;
  if (cp >= 0x3000 && cp <= 0x303f) return false;
  return true;
}

uint32_t code_point_before(const std::string& s, size_t end, size_t* start) {
  size_t begin = end - 1;
  while (begin > 0 && (static_cast<unsigned char>(s[begin]) >> 6) == 2 && end - begin < 4) --begin;
  size_t length = 0;
  const uint32_t cp = code_point_at(s, begin, &length);
  if (begin + length != end) {  // not a whole character: the last byte alone
    *start = end - 1;
    return static_cast<unsigned char>(s[end - 1]);
  }
  *start = begin;
  return cp;
}

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  std::string out;
  size_t at = 0;
  for (size_t hit; (hit = s.find(from, at)) != std::string::npos; at = hit + from.size()) {
    out.append(s, at, hit - at);
    out += to;
  }
  out.append(s, at, std::string::npos);
  s = std::move(out);
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

}  // namespace llava::hf
