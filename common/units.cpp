// Parsing and printing of sizes and durations.
#include "common/units.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <utility>

namespace llava {
namespace {

// Splits "1.5GiB" into 1.5 and "GiB"; nullopt if the number part is not a plain
// non-negative decimal.
std::optional<std::pair<double, std::string>> split_number(const std::string& text) {
  size_t i = 0;
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  size_t start = i;
  bool digits = false, dot = false;
  for (; i < text.size(); ++i) {
    char c = text[i];
    if (std::isdigit(static_cast<unsigned char>(c))) {
      digits = true;
    } else if (c == '.' && !dot) {
      dot = true;
    } else {
      break;
    }
  }
  if (!digits) return std::nullopt;
  double value = std::strtod(text.substr(start, i - start).c_str(), nullptr);
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  std::string unit = text.substr(i);
  while (!unit.empty() && std::isspace(static_cast<unsigned char>(unit.back()))) unit.pop_back();
  return std::make_pair(value, unit);
}

}  // namespace

std::optional<uint64_t> parse_bytes(const std::string& text) {
  auto parts = split_number(text);
  if (!parts) return std::nullopt;
  auto [value, unit] = *parts;
  static const std::pair<const char*, double> kUnits[] = {
      {"", 1.0},       {"B", 1.0},        {"KiB", 1024.0},   {"MiB", 1048576.0},
      {"GiB", 1073741824.0}, {"TiB", 1099511627776.0}, {"KB", 1e3}, {"MB", 1e6},
      {"GB", 1e9},     {"TB", 1e12},      {"K", 1024.0},     {"M", 1048576.0},
      {"G", 1073741824.0}};
  for (const auto& [name, scale] : kUnits) {
    if (unit == name) {
      double bytes = value * scale;
      if (bytes > 1.8e19) return std::nullopt;
      return static_cast<uint64_t>(std::llround(bytes));
    }
  }
  return std::nullopt;
}

std::optional<uint64_t> parse_millis(const std::string& text) {
  auto parts = split_number(text);
  if (!parts) return std::nullopt;
  auto [value, unit] = *parts;
  double scale;
  if (unit.empty() || unit == "ms") {
    scale = 1.0;
  } else if (unit == "s") {
    scale = 1000.0;
  } else if (unit == "m" || unit == "min") {
    scale = 60000.0;
  } else {
    return std::nullopt;
  }
  return static_cast<uint64_t>(std::llround(value * scale));
}

std::string format_bytes(uint64_t bytes) {
  char buf[64];
  const double b = static_cast<double>(bytes);
  if (bytes >= (1ull << 30)) {
    std::snprintf(buf, sizeof buf, "%.2f GiB", b / (1ull << 30));
  } else if (bytes >= (1ull << 20)) {
    std::snprintf(buf, sizeof buf, "%.1f MiB", b / (1ull << 20));
  } else if (bytes >= (1ull << 10)) {
    std::snprintf(buf, sizeof buf, "%.1f KiB", b / (1ull << 10));
  } else {
    std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  }
  return buf;
}

std::string format_millis(uint64_t millis) {
  char buf[64];
  if (millis >= 60000 && millis % 60000 == 0) {
    std::snprintf(buf, sizeof buf, "%llu min", static_cast<unsigned long long>(millis / 60000));
  } else if (millis >= 1000) {
    std::snprintf(buf, sizeof buf, "%g s", millis / 1000.0);
  } else {
    std::snprintf(buf, sizeof buf, "%llu ms", static_cast<unsigned long long>(millis));
  }
  return buf;
}

}  // namespace llava
