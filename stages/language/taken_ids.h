// A sequence's ids from a place on, as far as a pass over them has taken them: a history
// only grows between draws, so a pass that keeps state over it (the sampler's counts, JSON
// mode's recognizer) takes in only what was added since; a history that does not continue
// the ids taken is taken afresh.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace llava {

class TakenIds {
 public:
  // Where in `history` the ids not taken yet begin (from `from` on); they are taken now.
  // Returns false, with the index at `from`, when `history` does not continue the ids taken
  // before (or after forget()): the caller's state over them starts over.
  bool take(const std::vector<int32_t>& history, size_t from, size_t& begin) {
    from = std::min(from, history.size());
    const bool continues =
        history.size() - from >= ids_.size() &&
        std::equal(ids_.begin(), ids_.end(), history.begin() + static_cast<long>(from));
    if (!continues) ids_.clear();
    begin = from + ids_.size();
    ids_.insert(ids_.end(), history.begin() + static_cast<long>(begin), history.end());
    return continues;
  }
  void forget() { ids_.clear(); }

 private:
  std::vector<int32_t> ids_;
};

}  // namespace llava
