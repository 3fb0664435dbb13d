// run_parallel: every item runs once, on several threads, and an exception thrown by one
// reaches the caller after the others ran (one left in a helper thread would end the process);
// calls nest (an item that runs run_parallel) and run at once from several threads without
// deadlock; the helper threads are kept from call to call.
#include "stages/parallel.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

namespace {

TEST(RunParallel, EveryItemRunsOnceWhateverTheCount) {
  for (size_t count : {0u, 1u, 2u, 7u, 1000u}) {
    std::vector<std::atomic<int>> runs(count);
    llava::run_parallel(count, [&](size_t i) { ++runs[i]; });
    for (size_t i = 0; i < count; ++i) EXPECT_EQ(runs[i].load(), 1) << i << " of " << count;
  }
}

TEST(RunParallel, AnItemThatThrowsReachesTheCallerAfterTheOthersRan) {
  std::atomic<int> ran{0};
  try {
    llava::run_parallel(200, [&](size_t i) {
      if (i == 37 || i == 150) throw std::runtime_error("item " + std::to_string(i));
      ++ran;
    });
    FAIL() << "no exception reached the caller";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_TRUE(what == "item 37" || what == "item 150") << what;
  }
  EXPECT_EQ(ran.load(), 198);
}

// Items that run run_parallel themselves, from two outer threads at once: every inner item
// runs once. A caller that waited for helpers busy in other calls would hang here.
TEST(RunParallel, NestedAndConcurrentCallsEachRunEveryItemOnce) {
  constexpr size_t kOuter = 40, kInner = 50;
  std::vector<std::atomic<int>> runs(2 * kOuter * kInner);
  auto outer = [&](size_t base) {
    llava::run_parallel(kOuter, [&](size_t i) {
      llava::run_parallel(kInner, [&](size_t j) { ++runs[base + i * kInner + j]; });
    });
  };
  std::thread other([&] { outer(kOuter * kInner); });
  outer(0);
  other.join();
  for (size_t i = 0; i < runs.size(); ++i) EXPECT_EQ(runs[i].load(), 1) << i;
}

// 200 calls are served by at most one thread per core (the caller and the kept helpers):
// a helper started for each call would be a new thread each time.
TEST(RunParallel, HelperThreadsAreKeptFromCallToCall) {
  static std::atomic<int> threads_seen{0};
  for (int call = 0; call < 200; ++call) {
    llava::run_parallel(64, [](size_t) {
      thread_local bool seen = false;
      if (!seen) {
        seen = true;
        ++threads_seen;
      }
      volatile double x = 0;  // some work, so that helpers take items too
      for (int k = 0; k < 2000; ++k) x = x + k;
    });
  }
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  EXPECT_GE(threads_seen.load(), 1);
  EXPECT_LE(threads_seen.load(), cores);
}

}  // namespace
