// Runs work(0) .. work(count - 1) on threads of our own (one per core, up to one per
// item; the caller's thread takes a share). For host work that LibTorch's intra-op pool
// should not do: it is off (one thread) in CUDA workers.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace llava {

// Every item runs, whatever the others throw; then the first exception thrown is rethrown
// on the caller's thread (an exception left in a helper would end the process). Where no
// thread can be started (a container's process limit), the caller does the rest itself.
inline void run_parallel(size_t count, const std::function<void(size_t)>& work) {
  std::atomic<size_t> next{0};
  std::exception_ptr first_error;
  std::mutex error_mutex;
  auto drain = [&] {
    for (size_t i = next++; i < count; i = next++) {
      try {
        work(i);
      } catch (...) {
        const std::lock_guard<std::mutex> lock(error_mutex);
        if (!first_error) first_error = std::current_exception();
      }
    }
  };
  const size_t cores = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> helpers;
  for (size_t h = 1; h < std::min(count, cores); ++h) {
    try {
      helpers.emplace_back(drain);
    } catch (const std::system_error&) {
      break;
    }
  }
  drain();
  for (auto& thread : helpers) thread.join();
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace llava
