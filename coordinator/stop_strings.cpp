// Stop strings over streamed text.
#include "coordinator/stop_strings.h"

#include <algorithm>

namespace llava {

StopStrings::StopStrings(std::vector<std::string> stops) {
  for (auto& s : stops) {
    if (s.empty()) continue;  // would match everywhere; the config refuses it
    longest_ = std::max(longest_, s.size());
    stops_.push_back(std::move(s));
  }
}

std::string StopStrings::push(const std::string& fresh) {
  if (stopped_) return "";
  const size_t before = text_.size();
  text_ += fresh;
  // A stop string not seen before ends in `fresh`: search only where it could start.
  const size_t from = before + 1 > longest_ ? before + 1 - longest_ : 0;
  size_t cut = std::string::npos;
  for (const auto& stop : stops_) {
    size_t at = text_.find(stop, from);
    while (at != std::string::npos && at + stop.size() <= protected_) at = text_.find(stop, at + 1);
    cut = std::min(cut, at);
  }
  if (cut != std::string::npos) {
    stopped_ = true;
    text_.resize(std::max(cut, streamed_));  // what is left of it comes from finish()
    return "";
  }
  // Hold back the longest end of the text that begins some stop string.
  size_t hold = 0;
  for (const auto& stop : stops_) {
    for (size_t k = std::min(stop.size() - 1, text_.size() - streamed_); k > hold; --k) {
      if (text_.compare(text_.size() - k, k, stop, 0, k) == 0) {
        hold = k;
        break;
      }
    }
  }
  const size_t safe = text_.size() - hold;
  std::string out = text_.substr(streamed_, safe - streamed_);
  streamed_ = safe;
  return out;
}

std::string StopStrings::finish() {
  std::string out = text_.substr(streamed_);
  streamed_ = text_.size();
  return out;
}

}  // namespace llava
