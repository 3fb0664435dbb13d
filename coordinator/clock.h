// The coordinator's time: steady_clock, read through a function that the layers are given,
// so that a test sets the time by hand (a missed heartbeat, a backoff, swap_after) and
// never sleeps.
#pragma once

#include <chrono>
#include <functional>
#include <optional>

namespace llava {

using Clock = std::chrono::steady_clock;
using ClockFn = std::function<Clock::time_point()>;

inline ClockFn steady_clock_fn() {
  return [] { return Clock::now(); };
}

inline double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// 0 when either end has not happened.
inline double ms_between(const std::optional<Clock::time_point>& a,
                         const std::optional<Clock::time_point>& b) {
  return a && b ? ms_between(*a, *b) : 0;
}

}  // namespace llava
