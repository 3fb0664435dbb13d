// JSON text from outside (request bodies, batch lines, checkpoint files) parsed with a bound
// on its nesting. nlohmann parses and destroys any depth without recursing, but copying,
// dumping and comparing a value recurse, a frame per level: one 2 MB HTTP body of a million
// '[' ended `serve` (a stack overflow) when its error message showed the value. Header-only,
// so that every target that parses such text (the fuzzers too) has it without a library.
#pragma once

#include <cstddef>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace llava {

// A reply, result line or error as JSON text. Answers are whole characters by construction,
// but an error may quote a path or bytes that are not UTF-8: those become U+FFFD instead of
// an exception that would end the server or the batch.
inline std::string json_text(const nlohmann::json& value) {
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// The value as written, shortened to 40 characters: an error must not echo a megabyte back.
inline std::string shown(const nlohmann::json& value) {
  std::string text = json_text(value);
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return text;
}

// serde_json's default: far past any request or checkpoint file (OpenAI's chat bodies nest
// 5 levels, tokenizer.json 4), far below a stack's reach.
constexpr int kMaxJsonDepth = 128;

// The offset of the bracket that opens level max_depth + 1 of `text` read as JSON ('[' and
// '{' inside strings do not count), or npos. Text that is not JSON is scanned all the same:
// the parser refuses it.
inline size_t json_nesting_past(std::string_view text, int max_depth = kMaxJsonDepth) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return i;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return std::string_view::npos;
}

// nlohmann::json::parse, with text nested past max_depth refused as a parse_error (id 101,
// at its byte) like any other syntax error, so callers' handlers take it unchanged.
inline nlohmann::json parse_json(std::string_view text, int max_depth = kMaxJsonDepth) {
  if (const size_t at = json_nesting_past(text, max_depth); at != std::string_view::npos) {
    throw nlohmann::json::parse_error::create(
        101, at + 1, "nested deeper than " + std::to_string(max_depth) + " levels", nullptr);
  }
  return nlohmann::json::parse(text);
}

// The text of the value at `path` in `text`: object keys, and in an array the item's decimal
// index ("0"); where a key is written twice, its last value (nlohmann's rule). A scan, not a
// parse (strings skipped with memchr): for one part of a large body (a schema beside images'
// base64) that a caller reads again, keeping what nlohmann's sorted objects lose. Meant for
// text already read as JSON; on other text it returns some span or nullopt, never reading
// outside `text`. nullopt where the path is not there.
inline std::optional<std::string_view> json_value_at(std::string_view text,
                                                     const std::vector<std::string>& path) {
  const size_t n = text.size();
  size_t i = 0;
  auto space = [&] {
    while (i < n && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r')) ++i;
  };
  auto skip_string = [&] {  // at '"': past its closing quote
    const size_t open = i++;
    while (i < n) {
      const void* quote = std::memchr(text.data() + i, '"', n - i);
      if (!quote) break;
      const size_t at = static_cast<size_t>(static_cast<const char*>(quote) - text.data());
      size_t slashes = 0;
      while (at - slashes - 1 > open && text[at - slashes - 1] == '\\') ++slashes;
      i = at + 1;
      if (slashes % 2 == 0) return true;
    }
    i = n;
    return false;
  };
  auto skip_value = [&] {
    space();
    if (i >= n) return false;
    if (text[i] == '"') return skip_string();
    if (text[i] == '{' || text[i] == '[') {
      for (int depth = 0; i < n;) {
        const char c = text[i];
        if (c == '"') {
          if (!skip_string()) return false;
          continue;
        }
        ++i;
        if (c == '{' || c == '[') ++depth;
        if ((c == '}' || c == ']') && --depth == 0) return true;
      }
      return false;
    }
    const size_t start = i;  // a number, true, false, null
    while (i < n && std::string_view(",}] \t\n\r").find(text[i]) == std::string_view::npos) ++i;
    return i > start;
  };
  for (const std::string& step : path) {
    space();
    if (i >= n) return std::nullopt;
    if (text[i] == '{') {
      ++i;
      size_t found = std::string_view::npos;
      for (bool first = true;; first = false) {
        space();
        if (i < n && text[i] == '}' && first) break;
        if (i >= n || text[i] != '"') return std::nullopt;
        const size_t key = i;
        if (!skip_string()) return std::nullopt;
        const std::string_view name = text.substr(key + 1, i - key - 2);
        const bool match = name.find('\\') == std::string_view::npos
                               ? name == step
                               : nlohmann::json::parse(text.substr(key, i - key)) == step;
        space();
        if (i >= n || text[i] != ':') return std::nullopt;
        ++i;
        space();
        if (match) found = i;
        if (!skip_value()) return std::nullopt;
        space();
        if (i < n && text[i] == ',') {
          ++i;
          continue;
        }
        if (i < n && text[i] == '}') break;
        return std::nullopt;
      }
      if (found == std::string_view::npos) return std::nullopt;
      i = found;
    } else if (text[i] == '[') {
      if (step.empty() || step.size() > 9 ||
          step.find_first_not_of("0123456789") != std::string::npos) {
        return std::nullopt;
      }
      const size_t index = std::stoul(step);
      ++i;
      for (size_t item = 0;; ++item) {
        space();
        if (i >= n || text[i] == ']') return std::nullopt;
        if (item == index) break;
        if (!skip_value()) return std::nullopt;
        space();
        if (i >= n || text[i] != ',') return std::nullopt;
        ++i;
      }
    } else {
      return std::nullopt;
    }
  }
  space();
  const size_t start = i;
  if (!skip_value()) return std::nullopt;
  return text.substr(start, i - start);
}

}  // namespace llava
