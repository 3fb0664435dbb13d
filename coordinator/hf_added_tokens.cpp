// Finding the added tokens in a text as added_vocabulary.rs's aho-corasick pass does.
#include "coordinator/hf_added_tokens.h"

#include <algorithm>

#include "coordinator/hf_text.h"

namespace llava::hf {

void AddedMatcher::finish() {
  std::stable_sort(patterns.begin(), patterns.end(),
                   [](const auto& x, const auto& y) { return x.first.size() > y.first.size(); });
}

std::vector<AddedMatcher::Split> AddedMatcher::find(const std::string& text) const {
  std::vector<Split> splits;
  size_t emitted = 0;  // end of the last split
  size_t from = 0;     // where the search goes on
  while (!patterns.empty() && from < text.size()) {
    const std::pair<std::string, const AddedToken*>* match = nullptr;
    size_t begin = from;
    for (; begin < text.size(); ++begin) {
      for (const auto& p : patterns) {
        if (text.compare(begin, p.first.size(), p.first) == 0) {
          match = &p;
          break;
        }
      }
      if (match) break;
    }
    if (!match) break;
    size_t end = begin + match->first.size();
    from = end;
    const AddedToken& token = *match->second;
    if (token.single_word) {
      size_t unused = 0;
      const bool left_ok = begin == 0 || !is_word_char(code_point_before(text, begin, &unused));
      const bool right_ok = end == text.size() || !is_word_char(code_point_at(text, end, &unused));
      if (!left_ok || !right_ok) continue;
    }
    if (token.lstrip) {
      size_t start = begin;
      while (start > emitted) {
        size_t previous = 0;
        if (!is_whitespace(code_point_before(text, start, &previous))) break;
        start = previous;
      }
      begin = start;
    }
    if (token.rstrip) {
      size_t length = 0;
      while (end < text.size() && is_whitespace(code_point_at(text, end, &length))) end += length;
      from = end;
    }
    if (emitted < begin) splits.push_back({nullptr, emitted, begin});
    splits.push_back({&token, begin, end});
    emitted = end;
  }
  if (emitted < text.size()) splits.push_back({nullptr, emitted, text.size()});
  return splits;
}

}  // namespace llava::hf
