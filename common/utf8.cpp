// UTF-8 validity.
#include "common/utf8.h"

#include <cstdint>

namespace llava {

size_t utf8_error_offset(const std::string& text) {
  const auto* begin = reinterpret_cast<const unsigned char*>(text.data());
  const auto* end = begin + text.size();
  const auto* p = begin;
  while (p < end) {
    const unsigned char c = *p;
    int more = 0;
    uint32_t code = 0, least = 0;
    if (c < 0x80) {
      ++p;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      more = 1, code = c & 0x1F, least = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      more = 2, code = c & 0x0F, least = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      more = 3, code = c & 0x07, least = 0x10000;
    } else {
      return static_cast<size_t>(p - begin);
    }
    if (end - p <= more) return static_cast<size_t>(p - begin);
    for (int i = 1; i <= more; ++i) {
      if ((p[i] & 0xC0) != 0x80) return static_cast<size_t>(p - begin);
      code = (code << 6) | (p[i] & 0x3F);
    }
    if (code < least || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) {
      return static_cast<size_t>(p - begin);
    }
    p += more + 1;
  }
  return std::string::npos;
}

std::string utf8_lossy(const std::string& text) {
  std::string out;
  size_t from = 0;
  while (from < text.size()) {
    const std::string rest = text.substr(from);
    const size_t bad = utf8_error_offset(rest);
    if (bad == std::string::npos) return out + rest;
    out += rest.substr(0, bad);
    out += "\xef\xbf\xbd";
    from += bad + 1;
  }
  return out;
}

}  // namespace llava
