// JSON text from outside (request bodies, batch lines, checkpoint files) parsed with a bound
// on its nesting. nlohmann parses and destroys any depth without recursing, but copying,
// dumping and comparing a value recurse, a frame per level: one 2 MB HTTP body of a million
// '[' ended `serve` (a stack overflow) when its error message showed the value. Header-only,
// so that every target that parses such text (the fuzzers too) has it without a library.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

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

}  // namespace llava
