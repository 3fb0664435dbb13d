// Runs work(0) .. work(count - 1) on threads of our own (one per core, up to one per
// item; the caller's thread takes a share). For host work that LibTorch's intra-op pool
// should not do: it is off (one thread) in CUDA workers.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <functional>
#include <thread>
#include <vector>

namespace llava {

inline void run_parallel(size_t count, const std::function<void(size_t)>& work) {
  std::atomic<size_t> next{0};
  auto drain = [&] {
    for (size_t i = next++; i < count; i = next++) work(i);
  };
  const size_t cores = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> helpers;
  for (size_t h = 1; h < std::min(count, cores); ++h) helpers.emplace_back(drain);
  drain();
  for (auto& thread : helpers) thread.join();
}

}  // namespace llava
