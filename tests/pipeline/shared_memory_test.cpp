// Embeddings through shared memory with real worker processes: the answers are exact
// whichever way the embeddings went, and a worker that cannot read the memory, or lies
// about where it wrote, costs a retry through the socket, never a request.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <filesystem>

#include "pipeline_harness.h"

namespace llava::test {
namespace {

// Every case three times, one image's task at a time (the size of an image's embeddings
// is learnt from the first answer; later tasks are offered ranges), no cache (every
// image through the vision stage).
std::vector<Case> cases_three_times() {
  std::vector<Case> cases;
  for (int i = 0; i < 3; ++i) cases.insert(cases.end(), kCases.begin(), kCases.end());
  return cases;
}

std::string config(const std::string& name, const std::string& shared_memory) {
  return write_config(name, concurrent_cpu(1, 4),
                      "embedding_cache: 0, shared_memory: " + shared_memory);
}

// The cases through real workers, and what every run must give: each answer exact, no
// worker death.
Outcome run_exact(const std::string& name, const std::string& shared_memory) {
  Outcome outcome = run_pipeline(config(name, shared_memory), cases_three_times());
  expect_all_match(outcome);
  expect_no_deaths(outcome);
  return outcome;
}

// Our files in /dev/shm made by this process (the coordinator here).
size_t files_of_this_process() {
  size_t n = 0;
  const std::string prefix = "llava-pipe-" + std::to_string(getpid()) + "-";
  for (const auto& entry : std::filesystem::directory_iterator("/dev/shm")) {
    n += entry.path().filename().string().rfind(prefix, 0) == 0;
  }
  return n;
}

TEST(SharedMemoryPipeline, EmbeddingsCrossThroughSharedMemoryAndTheAnswersAreExact) {
  const Outcome outcome = run_exact("shared", "8MiB");
  // 18 images; the first tasks go out before any answer says how big one image's are.
  EXPECT_GE(outcome.shared_frames_read, 10u);
  EXPECT_GE(outcome.shared_tasks_as_ranges, 8u);
  EXPECT_EQ(outcome.shared_workers, 2u);
  EXPECT_EQ(files_of_this_process(), 0u) << "the coordinator's files outlived it";
}

TEST(SharedMemoryPipeline, OffTheSocketCarriesEverything) {
  const Outcome outcome = run_exact("unshared", "0");
  EXPECT_EQ(outcome.shared_frames_read, 0u);
  EXPECT_EQ(outcome.shared_tasks_as_ranges, 0u);
  EXPECT_EQ(outcome.shared_workers, 0u);
}

// A /dev/shm without room for the file (here: twice its size asked): the file is never
// made, a line says why, and everything goes through the socket.
TEST(SharedMemoryPipeline, ADevShmWithoutRoomForTheFileLeavesItAllToTheSocket) {
  struct statvfs shm {};
  ASSERT_EQ(statvfs("/dev/shm", &shm), 0);
  const uint64_t too_big = 2 * static_cast<uint64_t>(shm.f_blocks) * shm.f_frsize;
  const Outcome outcome = run_exact("no-room", std::to_string(too_big >> 20) + "MiB");
  EXPECT_EQ(outcome.shared_frames_read, 0u);
  EXPECT_EQ(outcome.shared_tasks_as_ranges, 0u);
  EXPECT_EQ(files_of_this_process(), 0u);
}

TEST(SharedMemoryPipeline, ALanguageWorkerThatCannotReadItGetsTheBytesAndLosesNothing) {
  ScopedEnv unreadable("LLAVA_PIPE_FAULT_SHARED_UNREADABLE", "1");
  const Outcome outcome = run_exact("unreadable", "8MiB");
  EXPECT_GE(outcome.shared_frames_read, 10u);  // the vision side still used it
  // The language tasks sent with ranges before the first failure came back (one, or a
  // few sent in the same moment) failed to read them and ran again with bytes; the
  // coordinator sent that worker bytes from then on.
  EXPECT_GE(outcome.shared_tasks_as_ranges, 1u);
  EXPECT_EQ(outcome.shared_workers, 1u);  // the vision worker
}

TEST(SharedMemoryPipeline, AVisionWorkerThatLiesAboutItsRangeIsNotBelievedAndLosesNothing) {
  ScopedEnv lie("LLAVA_PIPE_FAULT_SHARED_OFFSET_LIE", "1073741824");  // past any range
  const Outcome outcome = run_exact("lie", "8MiB");
  EXPECT_EQ(outcome.shared_frames_read, 0u);  // nothing read outside a range offered
  EXPECT_EQ(outcome.shared_tasks_as_ranges, 0u);
  EXPECT_EQ(outcome.shared_workers, 1u);  // the language worker
}

}  // namespace
}  // namespace llava::test
