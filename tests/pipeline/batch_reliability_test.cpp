// Batch files past every limit: five thousand lines (five times the workers' queues, past
// coordinator.queue_capacity), lines that fail, a full output disk, an output file that is
// the requests file. Each run answers every line exactly once or says why not.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "common/config.h"
#include "common/errors.h"
#include "common/transport.h"
#include "common/wire.h"
#include "coordinator/coordinator.h"
#include "in_process.h"
#include "tests/test_images.h"
#include "reliability_harness.h"

namespace {

using llava::test::kBinary;
using llava::test::kImages;
using llava::test::kModel;
using llava::test::ScopedEnv;
using Clock = std::chrono::steady_clock;
using namespace llava::test::reliability;

// A batch of `count` lines over a few prompts and images (so answers repeat and can be
// compared): line i has id "r<i>".
std::string write_batch(const std::string& name, int count, const std::string& extra_line = "") {
  const std::string path = temp_path(name + ".jsonl");
  std::ofstream out(path);
  const std::vector<std::string> images = {kImages + "img01_320x240_RGB.jpg", kImages + "img11_200x150_RGBA.png"};
  for (int i = 0; i < count; ++i) {
    nlohmann::json line = {{"id", "r" + std::to_string(i)}, {"prompt", "Question " + std::to_string(i % 5)}};
    if (i % 3 != 0) line["image"] = images[static_cast<size_t>(i) % images.size()];
    out << line.dump() << "\n";
  }
  if (!extra_line.empty()) out << extra_line << "\n";
  return path;
}

std::vector<nlohmann::json> read_results(const std::string& path) {
  std::vector<nlohmann::json> results;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) results.push_back(nlohmann::json::parse(line));
  return results;
}

double coordinator_peak_mib(const std::string& output) {
  std::smatch m;
  if (!std::regex_search(output, m, std::regex("coordinator peak host memory: ([0-9.]+) (KiB|MiB|GiB)"))) return -1;
  const double value = std::stod(m[1]);
  return m[2] == "KiB" ? value / 1024 : m[2] == "GiB" ? value * 1024 : value;
}

// Every line answered once, in input order, each ok; a prompt (and image) gives one answer.
void expect_complete_batch(const std::string& output_path, int count) {
  const auto results = read_results(output_path);
  ASSERT_EQ(results.size(), static_cast<size_t>(count));
  std::map<std::string, std::string> answers;  // line's prompt + image kind -> text
  for (int i = 0; i < count; ++i) {
    const auto& r = results[static_cast<size_t>(i)];
    ASSERT_EQ(r["id"], "r" + std::to_string(i)) << r.dump();
    ASSERT_TRUE(r["ok"].get<bool>()) << r.dump();
    const std::string key = std::to_string(i % 5) + "/" + std::to_string(i % 3 == 0 ? -1 : i % 2);
    auto [it, fresh] = answers.emplace(key, r["text"].get<std::string>());
    EXPECT_EQ(it->second, r["text"].get<std::string>()) << "line " << i << " answered differently";
  }
}

// Five thousand lines: five times the workers' queues, past coordinator.queue_capacity; fed
// as room frees up, every one answered, in bounded coordinator memory.
// Returns the big run's output.
std::string run_five_thousand(const std::string& mode_body, const std::string& name,
                              const std::string& coordinator = "") {
  const std::string config = write_config(
      name, mode_body, "queue_capacity: 256" + (coordinator.empty() ? "" : ", " + coordinator));
  const std::string small_out = temp_path(name + "-500.out.jsonl");
  Command small = run_llava_pipe("run " + config + " --requests " + write_batch(name + "-500", 500) +
                                 " --output " + small_out);
  EXPECT_EQ(small.exit_code, 0) << small.output;
  const std::string out = temp_path(name + ".out.jsonl");
  Command big = run_llava_pipe("run " + config + " --requests " + write_batch(name, 5000) + " --output " + out);
  EXPECT_EQ(big.exit_code, 0) << big.output;
  expect_complete_batch(out, 5000);
  // Bounded: ten times the lines, about the same coordinator memory.
  const double small_mib = coordinator_peak_mib(small.output), big_mib = coordinator_peak_mib(big.output);
  EXPECT_GT(small_mib, 0) << small.output;
  EXPECT_LT(big_mib, small_mib + 16) << "500 lines: " << small_mib << " MiB, 5000 lines: " << big_mib << " MiB";
  return big.output;
}

// "embeddings through shared memory: N images ..." of a run's output; -1 if absent.
long shared_images(const std::string& output) {
  std::smatch m;
  if (!std::regex_search(output, m,
                         std::regex("embeddings through shared memory: ([0-9]+) images")))
    return -1;
  return std::stol(m[1]);
}

TEST(Reliability, FiveThousandLineBatchIsAnsweredWholeInSequentialMode) {
  run_five_thousand(kSequential, "batch-sequential");
}

TEST(Reliability, FiveThousandLineBatchIsAnsweredWholeInConcurrentMode) {
  run_five_thousand(kConcurrent, "batch-concurrent");
}

// The embeddings of 3,334 images through a shared memory of four ranges (one image's each,
// no cache): most tasks find it full and send bytes, the rest take the ranges finished
// requests give back; every line answered alike.
TEST(Reliability, FiveThousandLinesThroughFourRangesOfSharedMemoryAreAnsweredWhole) {
  const std::string output =
      run_five_thousand(kConcurrent, "batch-shared", "embedding_cache: 0, shared_memory: 16KiB");
  const long shared = shared_images(output);
  EXPECT_GT(shared, 0) << output;     // some through the ranges
  EXPECT_LT(shared, 3334) << output;  // and some as bytes, the ranges all taken
}

TEST(Reliability, ABatchWithFailedLinesExitsThreeAndNamesEachLine) {
  const std::string config = write_config("failed-lines", kConcurrent);
  const std::string in = write_batch("failed-lines", 20, R"({"id": "r3", "prompt": "again"})");
  {
    std::ofstream add(in, std::ios::app);
    add << R"({"prompt": "no id", "image": "missing.png"})" << "\n";
  }
  const std::string out = temp_path("failed-lines.out.jsonl");
  Command c = run_llava_pipe("run " + config + " --requests " + in + " --output " + out);
  EXPECT_EQ(c.exit_code, llava::kExitSomeFailed) << c.output;
  EXPECT_NE(c.output.find("2 of 22 requests failed"), std::string::npos) << c.output;
  const auto results = read_results(out);
  ASSERT_EQ(results.size(), 22u);
  EXPECT_FALSE(results[20]["ok"].get<bool>());
  EXPECT_NE(results[20]["error"].get<std::string>().find("id \"r3\" is already used by line 4"), std::string::npos)
      << results[20].dump();
  EXPECT_TRUE(results[21]["id"].is_null());
  EXPECT_EQ(results[21]["line"], 22);
  EXPECT_NE(results[21]["error"].get<std::string>().find("missing.png"), std::string::npos) << results[21].dump();
}

TEST(Reliability, AnOutputFileOnAFullDeviceFailsNamingThePath) {
  const std::string config = write_config("full-device", kConcurrent);
  Command c = run_llava_pipe("run " + config + " --requests " + write_batch("full-device", 5) + " --output /dev/full");
  EXPECT_EQ(c.exit_code, llava::kExitRuntime) << c.output;
  EXPECT_NE(c.output.find("/dev/full: writing result 1 failed: No space left on device"), std::string::npos)
      << c.output;
}

// The file system fills up mid-batch: the run fails naming the file, and the file holds only
// whole result lines (never half of one), as many as it says.
TEST(Reliability, AFullFileSystemLeavesOnlyWholeLinesAndSaysHowMany) {
  const std::string config = write_config("full-disk", kConcurrent);
  const std::string out = temp_path("full-disk.out.jsonl");
  Command c = run_llava_pipe("run " + config + " --requests " + write_batch("full-disk", 40) + " --output " + out,
                             "LLAVA_PIPE_FAULT_OUTPUT_LIMIT=3000");
  EXPECT_EQ(c.exit_code, llava::kExitRuntime) << c.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(c.output, m, std::regex("No space left on device; it holds the ([0-9]+) whole results")))
      << c.output;
  const size_t kept = std::stoul(m[1]);
  EXPECT_GT(kept, 0u);
  std::ifstream in(out);
  size_t lines = 0;
  for (std::string line; std::getline(in, line); ++lines) {
    EXPECT_TRUE(nlohmann::json::accept(line)) << "line " << lines + 1 << ": " << line;
  }
  EXPECT_EQ(lines, kept);
  EXPECT_FALSE(std::filesystem::exists(out + ".partial"));
}

TEST(Reliability, TheOutputFileCannotBeTheRequestsFile) {
  const std::string config = write_config("same-file", kConcurrent);
  const std::string in = write_batch("same-file", 3);
  Command c = run_llava_pipe("run " + config + " --requests " + in + " --output " + in);
  EXPECT_EQ(c.exit_code, llava::kExitUsage) << c.output;
  EXPECT_NE(c.output.find("the output file is the requests file"), std::string::npos) << c.output;
  EXPECT_EQ(read_results(in).size(), 3u);  // untouched
}


}  // namespace
