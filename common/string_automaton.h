// The automata a JSON schema's string may be held to (common/json_schema.h): a format's
// (RFC 3339 date / time / date-time, uuid, ipv4) or a pattern's (a regular expression of
// ECMA-262's syntax, the subset below). Deterministic, over the ASCII characters a JSON
// string holds unescaped (space to '~' but '"' and '\', and DEL), every state able to reach
// an end: a text that follows one never dead-ends.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string_view>
#include <vector>

namespace llava {

struct StringAutomaton {
  static constexpr size_t kMaxStates = 1024;
  std::vector<std::array<int16_t, 128>> next;  // next[state][c]: -1 where c may not come
  std::vector<bool> accept;                    // where the string may end

  // A new state, with no way on and no end; its number.
  int add_state() {
    next.emplace_back();
    next.back().fill(-1);
    accept.push_back(false);
    return static_cast<int>(next.size()) - 1;
  }
};

// A pattern this cannot follow; what() says what (the caller adds where).
struct PatternError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A string format's automaton ("date", "time", "date-time", "uuid", "ipv4"); null for another.
std::shared_ptr<const StringAutomaton> format_automaton(std::string_view format);

// A JSON Schema "pattern": the strings it matches anywhere in them (^ and $ anchor a top-level
// alternative), as far as they can be written unescaped. Takes literals, '.', classes
// ([a-z], [^...]), the escapes \d \D \w \W \s \S \t \n \r \f \v \xHH \uHHHH and escaped
// punctuation, groups ((...), (?:...)), '|', and the quantifiers ? * + {n} {n,} {n,m} (lazy
// or not: the same strings). Throws PatternError for anything else (lookaround,
// backreferences, \b, anchors inside, a count above 1000, groups nested over 32 deep, more
// than kMaxStates states) and
// for a pattern no such string matches.
std::shared_ptr<const StringAutomaton> pattern_automaton(std::string_view pattern);

}  // namespace llava
