// run_parallel: every item runs once, on several threads, and an exception thrown by one
// reaches the caller after the others ran (one left in a helper thread would end the process).
#include "stages/parallel.h"

#include <gtest/gtest.h>

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

}  // namespace
