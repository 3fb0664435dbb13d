// The bytes each token id adds to a text, as one string and where each token's bytes end:
// what a language worker needs to constrain an answer's text (JSON mode) without a
// tokenizer of its own. The coordinator makes it from its tokenizer (special tokens have
// none) and sends it with such a task (LanguageTask.tokenBytes / tokenEnds).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/messages.capnp.h"

namespace llava {

struct TokenTable {
  std::string bytes;           // every token's bytes, in id order
  std::vector<uint32_t> ends;  // token i is bytes[ends[i - 1], ends[i]) (from 0 for i = 0)

  size_t size() const { return ends.size(); }
  std::string_view operator[](size_t id) const {
    const uint32_t begin = id == 0 ? 0 : ends[id - 1];
    return std::string_view(bytes).substr(begin, ends[id] - begin);
  }
  void push_back(std::string_view token) {
    bytes.append(token);
    ends.push_back(static_cast<uint32_t>(bytes.size()));
  }
  // Whether a peer's table holds together: ends never go back and the last is the size.
  bool consistent() const {
    uint32_t last = 0;
    for (uint32_t end : ends) {
      if (end < last) return false;
      last = end;
    }
    return last == bytes.size();
  }
};

void to_wire(const TokenTable& table, schema::LanguageTask::Builder task);
// The task's table; RequestError where a peer's does not hold together (ends that go back,
// or past its bytes).
TokenTable token_table_from_wire(schema::LanguageTask::Reader task);

}  // namespace llava
