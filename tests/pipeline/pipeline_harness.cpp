// run_pipeline and the checks on its outcome (see pipeline_harness.h).
#include "pipeline_harness.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include "common/config.h"

namespace llava::test {

std::string write_config(const std::string& name, const std::string& body,
                         const std::string& coordinator) {
  const std::string path = testing::TempDir() + name + ".yaml";
  std::ofstream(path) << "model: {checkpoint: " << kModel << ", dtype: float32}\n"
                      << body
                      << "coordinator: {endpoint: 'ipc://@llava-pipe-test-{pid}', "
                         "heartbeat_interval: 100ms, liveness: 5"
                      << (coordinator.empty() ? "" : ", " + coordinator) << "}\n"
                      << "generation: {max_new_tokens: " << kMaxNewTokens << "}\n";
  return path;
}

std::string concurrent_cpu(int vision_batch, int language_batch) {
  return "mode: concurrent\nshare_devices: true\nstages: {vision: {devices: cpu, batch_size: " +
         std::to_string(vision_batch) +
         "}, language: {devices: cpu, batch_size: " + std::to_string(language_batch) +
         ", max_context: 256}}\n";
}

std::vector<int32_t> expected_tokens(const llava::Coordinator& c, const Case& item) {
  return llava::test::generate_in_process(c, "USER: {images}{prompt} ASSISTANT:", item.prompt,
                                          item.images, kModel, kMaxNewTokens);
}

llava::RequestSpec spec_of(const Case& item, const std::string& config_path) {
  llava::RequestSpec spec;
  spec.prompt = item.prompt;
  spec.image_paths = item.images;
  spec.generation = llava::load_config(config_path).generation;
  return spec;
}

Outcome run_pipeline(const std::string& config_path, const std::vector<Case>& cases, Hooks hooks,
                     size_t expected_count) {
  Outcome outcome;
  llava::Coordinator* self = nullptr;
  llava::CoordinatorEvents events;
  events.on_result = [&](const llava::RequestResult& r) {
    outcome.results[r.id] = r;
    ++outcome.answers[r.id];
  };
  if (hooks.on_text)
    events.on_text = [&](uint64_t id, const std::string& t) { hooks.on_text(*self, id, t); };
  if (hooks.on_lease_event) {
    events.on_lease_event = [&](const llava::LeaseEvent& e) { hooks.on_lease_event(*self, e); };
  }
  llava::Coordinator coordinator(llava::load_config(config_path), events, kBinary + "/llava-stage");
  self = &coordinator;
  for (const auto& item : cases) {
    if (outcome.expected.size() < expected_count) {
      outcome.expected.push_back(expected_tokens(coordinator, item));
    }
    outcome.ids.push_back(coordinator.submit(spec_of(item, config_path)));
  }
  coordinator.run();
  coordinator.shutdown_workers();
  outcome.timeline = coordinator.timeline();
  outcome.reports = coordinator.reports();
  outcome.shared_frames_read = coordinator.shared_embeddings().frames_read();
  outcome.shared_tasks_as_ranges = coordinator.shared_embeddings().tasks_sent_as_ranges();
  outcome.shared_workers = coordinator.shared_embeddings().workers_seeing_ours();
  return outcome;
}

void expect_all_match(const Outcome& outcome) {
  for (size_t i = 0; i < outcome.ids.size(); ++i) {
    const uint64_t id = outcome.ids[i];
    ASSERT_EQ(outcome.answers.count(id), 1u) << "request " << i << " got no answer";
    EXPECT_EQ(outcome.answers.at(id), 1) << "request " << i << " answered more than once";
    const auto& r = outcome.results.at(id);
    EXPECT_TRUE(r.ok) << "request " << i << ": " << r.error;
    EXPECT_EQ(r.tokens, outcome.expected[i]) << "request " << i;
  }
}

void expect_all_failed_with(const Outcome& outcome, const std::string& error) {
  for (uint64_t id : outcome.ids) {
    ASSERT_EQ(outcome.answers.count(id), 1u) << "request " << id << " got no answer";
    EXPECT_EQ(outcome.answers.at(id), 1) << "request " << id << " answered more than once";
    const auto& r = outcome.results.at(id);
    EXPECT_FALSE(r.ok) << "request " << id;
    EXPECT_NE(r.error.find(error), std::string::npos) << r.error;
    EXPECT_EQ(r.error_kind, llava::ErrorKind::kUnavailable) << r.error;  // a stage that cannot run
  }
}

void expect_no_overlapping_leases(const std::vector<llava::LeaseEvent>& timeline) {
  struct Hold {
    std::string process, device;
    double from, to;
  };
  std::vector<Hold> holds;
  std::map<std::string, size_t> open;
  for (const auto& e : timeline) {
    if (e.what == "granted") {
      open[e.process] = holds.size();
      holds.push_back({e.process, e.device, e.seconds, 1e18});
    } else if ((e.what == "exited" || e.what == "died") && open.count(e.process)) {
      holds[open[e.process]].to = e.seconds;
      open.erase(e.process);
    } else if (e.what == "released" && open.count(e.process)) {
      holds[open[e.process]].to = e.seconds;  // unload: the device is free now
    }
  }
  for (size_t a = 0; a < holds.size(); ++a) {
    for (size_t b = a + 1; b < holds.size(); ++b) {
      if (holds[a].device != holds[b].device || holds[a].process == holds[b].process) continue;
      EXPECT_TRUE(holds[a].to <= holds[b].from || holds[b].to <= holds[a].from)
          << holds[a].process << " [" << holds[a].from << ", " << holds[a].to << ") overlaps "
          << holds[b].process << " [" << holds[b].from << ", " << holds[b].to << ")";
    }
  }
}

void expect_no_deaths(const Outcome& outcome) {
  for (const auto& r : outcome.reports) EXPECT_EQ(r.restarts, 0) << r.process;
  for (const auto& e : outcome.timeline) EXPECT_NE(e.what, "died") << e.process << ": " << e.detail;
}

int count_events(const std::vector<llava::LeaseEvent>& timeline, const std::string& process,
                 const std::string& what) {
  return static_cast<int>(std::count_if(timeline.begin(), timeline.end(), [&](const auto& e) {
    return e.process == process && e.what == what;
  }));
}

double first_event(const std::vector<llava::LeaseEvent>& timeline, const std::string& process,
                   const std::string& what) {
  for (const auto& e : timeline) {
    if (e.process == process && e.what == what) return e.seconds;
  }
  return -1;
}

}  // namespace llava::test
