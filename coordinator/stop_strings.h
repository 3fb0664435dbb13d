// Stop strings: generation ends where one of them first appears in the text, and the text
// ends just before it. While streaming, only the end of the text that could still grow
// into a stop string is held back; everything before it goes out at once.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

namespace llava {

class StopStrings {
 public:
  explicit StopStrings(std::vector<std::string> stops = {});

  // Appends `fresh` to the text; returns the part that may be streamed now. Once a stop
  // string appears, stopped() is true, nothing more is taken, and the text before the stop
  // string not streamed yet comes from finish().
  std::string push(const std::string& fresh);
  // The end of generation: what was held back.
  std::string finish();
  // min_tokens: a stop string that ends within the text's first `bytes` is no stop.
  void protect(size_t bytes) { protected_ = std::max(protected_, bytes); }

  bool stopped() const { return stopped_; }
  const std::string& text() const { return text_; }  // so far; cut before the stop string

 private:
  std::vector<std::string> stops_;
  size_t longest_ = 0;
  std::string text_;
  size_t streamed_ = 0;  // bytes of text_ already returned
  size_t protected_ = 0;  // bytes of text_ in which no stop string may end
  bool stopped_ = false;
};

}  // namespace llava
