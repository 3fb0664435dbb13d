// tokenizer.json's "added_tokens" (tokenizer/added_vocabulary.rs): tokens found in the text
// before anything else runs, each with its single_word / lstrip / rstrip / normalized rules,
// and the text split around them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "coordinator/hf_pre_tokenizer.h"

namespace llava::hf {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

// The tokens one pass looks for (the raw text's, or the normalized text's), matched
// leftmost-longest as the aho-corasick automaton of added_vocabulary.rs does.
struct AddedMatcher {
  std::vector<std::pair<std::string, const AddedToken*>> patterns;  // longest first

  void finish();  // call once the patterns are in

  // added_vocabulary.rs find_matches: (token or nullptr, [begin, end)) covering `text`.
  struct Split {
    const AddedToken* token;
    size_t begin, end;
  };
  std::vector<Split> find(const std::string& text) const;
};

// Splits the text pieces of `pieces` around the matcher's tokens; `before` runs on each text
// piece first (the normalizer, in the second pass). Empty pieces are dropped, as
// PreTokenizedString::split drops them.
template <typename Before>
std::vector<Piece> split_added(const AddedMatcher& matcher, std::vector<Piece> pieces,
                               Before before) {
  std::vector<Piece> out;
  for (auto& piece : pieces) {
    if (piece.token >= 0) {
      out.push_back(std::move(piece));
      continue;
    }
    const std::string text = before(piece.text);
    for (const auto& split : matcher.find(text)) {
      if (split.end == split.begin) continue;
      Piece p{text.substr(split.begin, split.end - split.begin),
              piece.at_origin && split.begin == 0, split.token ? split.token->id : -1};
      out.push_back(std::move(p));
    }
  }
  return out;
}

}  // namespace llava::hf
