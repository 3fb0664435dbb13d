// Sequential mode through real processes: the stages take turns on one device (never both
// holding it), a resident stage gives way at the swap thresholds, release: unload keeps the
// process, and a language worker streaming its layers still answers exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <map>

#include "common/config.h"
#include "coordinator/coordinator.h"
#include "pipeline_harness.h"

namespace llava::test {
namespace {

TEST(Pipeline, SequentialMatchesInProcessGeneration) {
  std::string config = kSequential;
  config.replace(config.find("batch_size: 4}"), 14, "batch_size: 4, release: exit}");
  Outcome outcome = run_pipeline(write_config("sequential", config), kCases);
  expect_all_match(outcome);
  expect_no_deaths(outcome);
  expect_no_overlapping_leases(outcome.timeline);
  // The vision process ended before the language worker got the device.
  const double vision_exit = first_event(outcome.timeline, "vision-0", "exited");
  const double language_grant = first_event(outcome.timeline, "language-0", "granted");
  ASSERT_GT(vision_exit, 0);
  ASSERT_GT(language_grant, 0);
  EXPECT_LT(vision_exit, language_grant);
}

// Sequential turns with lazy leases: the language worker holds the device with 8 text-only
// requests to answer (one at a time, slowed) when an image request arrives. With
// swap_batch 1 it gives way as soon as what it holds is done; with thresholds it does not
// reach (100 requests, 60 s) it answers all 8 first. Either way every answer is exact.
TEST(Pipeline, AResidentStageGivesWayAtTheSwapThresholds) {
  FaultDelay delay(30);
  const std::string body =
      "mode: sequential\nstages: {vision: {devices: cpu, batch_size: 4}, "
      "language: {devices: cpu, batch_size: 1, max_context: 256}}\n";
  // Text answers that came before the vision worker's grant, for each setting.
  auto answered_before_vision = [&](const std::string& name, const std::string& swap) {
    const std::string path = write_config(name, body, swap);
    std::vector<std::string> log;  // "text" per answer, "vision" at the vision grant
    std::map<uint64_t, llava::RequestResult> results;
    llava::CoordinatorEvents events;
    events.on_result = [&](const llava::RequestResult& r) {
      results[r.id] = r;
      log.push_back("answer");
    };
    events.on_lease_event = [&](const llava::LeaseEvent& e) {
      if (e.process == "vision-0" && e.what == "granted") log.push_back("vision");
    };
    llava::Coordinator coordinator(llava::load_config(path), events, kBinary + "/llava-stage");
    auto submit = [&](const Case& item) { return coordinator.submit(spec_of(item, path)); };
    std::vector<uint64_t> text;
    for (int i = 0; i < 8; ++i) text.push_back(submit({"Question " + std::to_string(i) + "?", {}}));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (count_events(coordinator.timeline(), "language-0", "granted") == 0 &&
           std::chrono::steady_clock::now() < deadline) {
      coordinator.step(std::chrono::milliseconds(20));
    }
    const uint64_t image = submit(kCases[0]);
    coordinator.run();
    coordinator.shutdown_workers();
    for (uint64_t id : text) EXPECT_TRUE(results.at(id).ok) << name << ": " << results.at(id).error;
    EXPECT_TRUE(results.at(image).ok) << results.at(image).error;
    EXPECT_EQ(results.at(image).tokens, expected_tokens(coordinator, kCases[0])) << name;
    const auto at = std::find(log.begin(), log.end(), "vision");
    EXPECT_NE(at, log.end()) << name;
    return static_cast<int>(at - log.begin());
  };
  EXPECT_LE(answered_before_vision("swap-now", "swap_batch: 1"), 3);
  EXPECT_EQ(answered_before_vision("swap-late", "swap_batch: 100, swap_after: 60s"), 8);
}

TEST(Pipeline, SequentialUnloadKeepsTheProcessAndFreesTheDevice) {
  std::string config = kSequential;
  config.replace(config.find("batch_size: 4}"), 14, "batch_size: 4, release: unload}");
  Outcome outcome = run_pipeline(write_config("unload", config), kCases);
  expect_all_match(outcome);
  expect_no_deaths(outcome);
  expect_no_overlapping_leases(outcome.timeline);
  EXPECT_LT(first_event(outcome.timeline, "vision-0", "released"),
            first_event(outcome.timeline, "language-0", "granted"));
  EXPECT_LT(first_event(outcome.timeline, "vision-0", "exited"), 0);  // kept its process
}

// release: offload (the default on the CPU, where the weights stay put): each round a new
// image makes the stages swap; the workers keep their processes from the first turn to the
// last, and every answer is the in-process one.
TEST(Pipeline, OffloadingStagesKeepTheirProcessesThroughEveryTurnAndAnswerAlike) {
  std::string body = kSequential;
  body.replace(body.find("batch_size: 4}"), 14, "batch_size: 4, release: offload}");
  body.replace(body.find("max_context: 256}"), 17, "max_context: 256, release: offload}");
  const std::string path = write_config("offload-turns", body);
  std::vector<llava::LeaseEvent> timeline;
  std::map<uint64_t, llava::RequestResult> results;
  llava::CoordinatorEvents events;
  events.on_result = [&](const llava::RequestResult& r) { results[r.id] = r; };
  events.on_lease_event = [&](const llava::LeaseEvent& e) { timeline.push_back(e); };
  llava::Coordinator coordinator(llava::load_config(path), events, kBinary + "/llava-stage");
  const std::vector<Case> rounds = {kCases[0], kCases[1], kCases[4], kCases[0]};
  // Worked out before the rounds: between them the coordinator sends no heartbeats, and
  // its workers must not take it for gone.
  std::vector<std::vector<int32_t>> expected;
  for (const Case& item : rounds) expected.push_back(expected_tokens(coordinator, item));
  for (size_t round = 0; round < rounds.size(); ++round) {
    llava::RequestSpec spec;
    spec.prompt = rounds[round].prompt;
    spec.image_paths = rounds[round].images;
    spec.generation = llava::load_config(path).generation;
    const uint64_t id = coordinator.submit(spec);
    coordinator.run();
    ASSERT_TRUE(results.count(id)) << "round " << round;
    ASSERT_TRUE(results[id].ok) << results[id].error;
    EXPECT_EQ(results[id].tokens, expected[round]) << "round " << round;
  }
  // The last round's image was seen in the first: no vision turn for it.
  EXPECT_EQ(results.rbegin()->second.cached_images, 1);
  std::map<std::string, int> started, released, granted;
  for (const auto& e : timeline) {
    started[e.process] += e.what == "started";
    released[e.process] += e.what == "released";
    granted[e.process] += e.what == "granted";
    EXPECT_NE(e.what, "exited") << e.process;
    EXPECT_NE(e.what, "died") << e.process << ": " << e.detail;
  }
  EXPECT_EQ(started["vision-0"], 1);
  EXPECT_EQ(started["language-0"], 1);
  EXPECT_EQ(granted["vision-0"], 3);  // the three new images
  EXPECT_GE(released["language-0"], 2);  // gave way for the second and third images
  expect_no_overlapping_leases(timeline);
}

// Streaming every decoder layer from host memory changes where weights live, not what
// the model computes: the same tokens as the resident in-process run.
TEST(Pipeline, LanguageWorkerStreamingItsLayersMatchesInProcessGeneration) {
  std::string config = kSequential;
  config.replace(config.find("max_context: 256}"), 17, "max_context: 256, offload: layers}");
  Outcome outcome = run_pipeline(write_config("offload", config), kCases);
  expect_all_match(outcome);
  expect_no_deaths(outcome);
}

}  // namespace
}  // namespace llava::test
