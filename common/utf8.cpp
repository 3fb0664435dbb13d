// UTF-8 validity.
#include "common/utf8.h"

#include <cstdint>

namespace llava {

size_t utf8_error_offset(const std::string& text) {
  const auto* begin = reinterpret_cast<const unsigned char*>(text.data());
  const auto* end = begin + text.size();
  for (const auto* p = begin; p < end;) {
    Utf8Lead lead;
    if (!utf8_lead(*p, lead) || end - p <= lead.more) return static_cast<size_t>(p - begin);
    for (int i = 1; i <= lead.more; ++i) {
      const unsigned char low = i == 1 ? lead.low : 0x80, high = i == 1 ? lead.high : 0xBF;
      if (p[i] < low || p[i] > high) return static_cast<size_t>(p - begin);
    }
    p += lead.more + 1;
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
