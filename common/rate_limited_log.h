// A log line at most once a second, counting the ones held back in between: a flood of bad
// messages (or of refused hellos) must not become a flood of log lines.
#pragma once

#include <chrono>
#include <cstddef>
#include <iostream>
#include <string>

namespace llava {

class RateLimitedLog {
 public:
  explicit RateLimitedLog(std::string prefix) : prefix_(std::move(prefix)) {}

  // Writes "PREFIX what" to stderr unless a line went out less than a second ago.
  void write(const std::string& what) {
    ++since_last_;
    const auto now = std::chrono::steady_clock::now();
    if (now - last_ < std::chrono::seconds(1)) return;
    std::cerr << prefix_ << what;
    if (since_last_ > 1) std::cerr << " (and " << since_last_ - 1 << " more since the last report)";
    std::cerr << "\n";
    last_ = now;
    since_last_ = 0;
  }

 private:
  std::string prefix_;
  std::chrono::steady_clock::time_point last_{};
  size_t since_last_ = 0;
};

}  // namespace llava
