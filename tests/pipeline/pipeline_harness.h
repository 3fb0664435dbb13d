// What the multi-process pipeline tests share: the test prompts (kCases), config files
// for each mode, run_pipeline (a coordinator here, real llava-stage workers as children, every
// answer and lease event kept) and the checks on its outcome.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "coordinator/coordinator.h"
#include "in_process.h"

namespace llava::test {

constexpr int kMaxNewTokens = 12;

struct Case {
  std::string prompt;
  std::vector<std::string> images;
};

inline const std::vector<Case> kCases = {
    {"What is in the picture?", {kImages + "img01_320x240_RGB.jpg"}},
    {"Describe the image in detail, café 日本 😀.", {kImages + "img11_200x150_RGBA.png"}},
    {"Compare the two images.",
     {kImages + "img02_240x320_RGB.jpg", kImages + "img09_400x300_L.jpg"}},
    {"What is the capital of France?", {}},
    {"And this one?", {kImages + "img13_180x120_P.gif"}},
};

// `coordinator` adds keys to the coordinator section ("spill_dir: /x, ...").
std::string write_config(const std::string& name, const std::string& body,
                         const std::string& coordinator = "");

inline const std::string kSequential =
    "mode: sequential\nstages: {vision: {devices: cpu, batch_size: 4}, "
    "language: {devices: cpu, batch_size: 4, max_context: 256}}\n";

// Both stages on the CPU at once (concurrent mode), batches as given (8: the default).
std::string concurrent_cpu(int vision_batch, int language_batch);

// A request for `item` with the config's generation section (the tests change a key or two).
llava::RequestSpec spec_of(const Case& item, const std::string& config_path);

// In-process generation's tokens for `item` (the reference every answer must equal).
std::vector<int32_t> expected_tokens(const llava::Coordinator& c, const Case& item);

struct Outcome {
  std::map<uint64_t, llava::RequestResult> results;
  std::map<uint64_t, int> answers;  // final answers per request: must be exactly one
  std::vector<llava::LeaseEvent> timeline;
  std::vector<llava::StageReport> reports;
  std::vector<std::vector<int32_t>> expected;
  std::vector<uint64_t> ids;
  // Embeddings through shared memory (coordinator.shared_memory): answers' frames read
  // from it, language tasks sent with ranges.
  uint64_t shared_frames_read = 0, shared_tasks_as_ranges = 0;
  size_t shared_workers = 0;  // that see the coordinator's, and were not refused since
};

// Hooks get the coordinator, to find worker pids at the moment they act.
struct Hooks {
  std::function<void(llava::Coordinator&, uint64_t, const std::string&)> on_text;
  std::function<void(llava::Coordinator&, const llava::LeaseEvent&)> on_lease_event;
};

// Expected tokens are computed for the first `expected_count` cases (the good ones).
Outcome run_pipeline(const std::string& config_path, const std::vector<Case>& cases,
                     Hooks hooks = {}, size_t expected_count = SIZE_MAX);

// Every request answered once, each exactly as in-process generation.
void expect_all_match(const Outcome& outcome);
// Every request answered once, each a failure whose error contains `error`.
void expect_all_failed_with(const Outcome& outcome, const std::string& error);
// [grant, end) of each lease, per device: end is "released" (unload) or the process's
// exit or death, whichever comes first after the release was asked.
void expect_no_overlapping_leases(const std::vector<llava::LeaseEvent>& timeline);
void expect_no_deaths(const Outcome& outcome);

// How many times `process` had the event `what`; the time of its first one, -1 if none.
int count_events(const std::vector<llava::LeaseEvent>& timeline, const std::string& process,
                 const std::string& what);
double first_event(const std::vector<llava::LeaseEvent>& timeline, const std::string& process,
                   const std::string& what);

class FaultDelay : public ScopedEnv {  // slows each worker step so that faults land mid-work
 public:
  explicit FaultDelay(int ms) : ScopedEnv("LLAVA_PIPE_FAULT_WORK_DELAY_MS", std::to_string(ms)) {}
};

}  // namespace llava::test
