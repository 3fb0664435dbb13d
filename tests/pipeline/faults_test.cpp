// Workers that fail mid-work, through real processes: killed, stalled, out of memory or
// with a sticky device error. Each request still gets exactly one answer, exact where the
// worker is replaced, or an error that says why.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "common/config.h"
#include "coordinator/coordinator.h"
#include "pipeline_harness.h"

namespace llava::test {
namespace {

TEST(Pipeline, LanguageWorkerKilledMidGenerationStillAnswersEachRequestOnce) {
  FaultDelay delay(20);
  bool killed = false;
  Hooks hooks;
  hooks.on_text = [&](llava::Coordinator& c, uint64_t, const std::string&) {
    if (killed) return;
    killed = true;
    kill(c.pid_of("language-0"), SIGKILL);
  };
  Outcome outcome = run_pipeline(write_config("kill-language", kSequential), kCases, hooks);
  ASSERT_TRUE(killed);
  expect_all_match(outcome);
  EXPECT_GE(outcome.reports[1].restarts, 1);
  expect_no_overlapping_leases(outcome.timeline);
}

TEST(Pipeline, VisionWorkerKilledMidBatchStillAnswersEachRequestOnce) {
  FaultDelay delay(100);
  bool killed = false;
  Hooks hooks;
  hooks.on_lease_event = [&](llava::Coordinator& c, const llava::LeaseEvent& e) {
    if (killed || e.process != "vision-0" || e.what != "granted") return;
    killed = true;
    kill(c.pid_of("vision-0"), SIGKILL);  // its batch was sent with the grant
  };
  Outcome outcome = run_pipeline(write_config("kill-vision", kSequential), kCases, hooks);
  ASSERT_TRUE(killed);
  expect_all_match(outcome);
  EXPECT_GE(outcome.reports[0].restarts, 1);
}

TEST(Pipeline, StalledWorkerIsDetectedWithinLiveness) {
  FaultDelay delay(20);
  std::chrono::steady_clock::time_point stopped, declared;
  Hooks hooks;
  hooks.on_text = [&](llava::Coordinator& c, uint64_t, const std::string&) {
    if (stopped.time_since_epoch().count() != 0) return;
    stopped = std::chrono::steady_clock::now();
    kill(c.pid_of("language-0"), SIGSTOP);
  };
  hooks.on_lease_event = [&](llava::Coordinator&, const llava::LeaseEvent& e) {
    if (e.what == "died" && declared.time_since_epoch().count() == 0) {
      declared = std::chrono::steady_clock::now();
    }
  };
  Outcome outcome = run_pipeline(write_config("stall", kSequential), kCases, hooks);
  ASSERT_NE(declared.time_since_epoch().count(), 0);
  const auto detection = std::chrono::duration_cast<std::chrono::milliseconds>(declared - stopped);
  // liveness (5) x heartbeat interval (100 ms), plus the loop's polling granularity.
  EXPECT_LE(detection.count(), 500 + 200) << "detected after " << detection.count() << " ms";
  expect_all_match(outcome);
}

// kCases with the fault hook `variable` set to `value`, firing once (LLAVA_PIPE_FAULT_ONCE);
// a failure if it never fired.
Outcome run_with_fault_once(const std::string& name, const char* variable,
                            const std::string& value) {
  const std::string once = testing::TempDir() + name + "-once";
  std::ofstream(once) << "armed";
  Outcome outcome;
  {
    ScopedEnv fault(variable, value);
    ScopedEnv fire_once("LLAVA_PIPE_FAULT_ONCE", once);
    outcome = run_pipeline(write_config(name, kSequential), kCases);
  }
  EXPECT_FALSE(std::filesystem::exists(once)) << name << ": the fault did not fire";
  return outcome;
}

TEST(Pipeline, StickyDeviceErrorEndsTheWorkerWhichIsRestartedAndResumes) {
  const Outcome outcome = run_with_fault_once("sticky", "LLAVA_PIPE_FAULT_STICKY_AFTER_STEPS", "3");
  expect_all_match(outcome);
  EXPECT_EQ(outcome.reports[1].restarts, 1);
  EXPECT_GT(first_event(outcome.timeline, "language-0", "died"), 0);
}

TEST(Pipeline, OutOfMemoryFailsThatRequestAloneAndTheWorkerLivesOn) {
  // Every prompt of kCases is short; a long one runs out of memory (injected).
  std::vector<Case> cases = kCases;
  std::string long_prompt;
  for (int i = 0; i < 80; ++i) long_prompt += "picture ";
  cases.push_back({long_prompt, {}});
  Outcome outcome;
  {
    ScopedEnv oom("LLAVA_PIPE_FAULT_OOM_PROMPT_TOKENS", "80");
    outcome = run_pipeline(write_config("oom", kSequential), cases, {}, kCases.size());
  }
  for (size_t i = 0; i < kCases.size(); ++i) {
    const auto& r = outcome.results.at(outcome.ids[i]);
    EXPECT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.tokens, outcome.expected[i]);
  }
  const auto& r = outcome.results.at(outcome.ids.back());
  EXPECT_FALSE(r.ok);
  // One line a user can act on: who, what, the allocation, the limit, the knobs; no backtrace.
  EXPECT_EQ(
      r.error,
      "language stage: language model: language-0 on cpu: out of memory prefilling this request's "
      "prompt (Tried to allocate 20.00 MiB); memory_limit none: lower stages.language.batch_size "
      "or "
      "max_context, or set quantize: int8 (or int4) or offload: layers, or raise memory_limit");
  EXPECT_EQ(r.error_kind, llava::ErrorKind::kInternal);
  expect_no_deaths(outcome);
}

// Decoding + preprocessing an image throwing what is not the image's fault (out of host
// memory, injected once): that image's request fails with the reason; the vision worker
// lives on and every other request is answered exactly.
TEST(Pipeline, PreprocessingThatThrowsFailsThatRequestAloneAndTheWorkerLivesOn) {
  const Outcome outcome =
      run_with_fault_once("preprocess-throws", "LLAVA_PIPE_FAULT_PREPROCESS_THROWS", "1");
  int failed = 0;
  for (size_t i = 0; i < kCases.size(); ++i) {
    const auto& r = outcome.results.at(outcome.ids[i]);
    if (r.ok) {
      EXPECT_EQ(r.tokens, outcome.expected[i]) << i;
      continue;
    }
    ++failed;
    EXPECT_FALSE(kCases[i].images.empty()) << i;
    EXPECT_NE(
        r.error.find(": decoding and preprocessing it failed: out of host memory (injected by "
                     "LLAVA_PIPE_FAULT_PREPROCESS_THROWS)"),
        std::string::npos)
        << r.error;
    EXPECT_EQ(r.error.rfind("vision stage: image ", 0), 0u) << r.error;
  }
  EXPECT_EQ(failed, 1);
  expect_no_deaths(outcome);
}

TEST(Pipeline, AWorkerThatKeepsDyingFailsItsRequestsWithTheReason) {
  FaultDelay delay(20);
  const std::string path = write_config("no-restarts", kSequential, "max_restarts_per_minute: 0");
  Hooks hooks;
  hooks.on_text = [&](llava::Coordinator& c, uint64_t, const std::string&) {
    if (c.pid_of("language-0") > 0) kill(c.pid_of("language-0"), SIGKILL);
  };
  Outcome outcome = run_pipeline(path, kCases, hooks, 0);
  expect_all_failed_with(
      outcome, "language stage: language-0 failed 1 times in 1 min (last: killed by signal 9)");
}

}  // namespace
}  // namespace llava::test
