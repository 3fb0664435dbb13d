// The whole pipeline through real processes: a coordinator here, llava-stage workers as
// children. Every answer is compared token for token with in-process generation
// (generate_local), undisturbed and with workers killed, stalled or fed bad input.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "common/config.h"
#include "common/curve.h"
#include "common/transport.h"
#include "coordinator/chat_template.h"
#include "coordinator/coordinator.h"
#include "coordinator/worker_process.h"
#include "in_process.h"

namespace {

using llava::test::kBinary;
using llava::test::kImages;
using llava::test::kModel;
using llava::test::kSource;
using llava::test::run_command;
using llava::test::ScopedEnv;

constexpr int kMaxNewTokens = 12;

struct Case {
  std::string prompt;
  std::vector<std::string> images;
};

const std::vector<Case> kCases = {
    {"What is in the picture?", {kImages + "img01_320x240_RGB.jpg"}},
    {"Describe the image in detail, café 日本 😀.", {kImages + "img11_200x150_RGBA.png"}},
    {"Compare the two images.", {kImages + "img02_240x320_RGB.jpg", kImages + "img09_400x300_L.jpg"}},
    {"What is the capital of France?", {}},
    {"And this one?", {kImages + "img13_180x120_P.gif"}},
};

// `coordinator` adds keys to the coordinator section ("spill_dir: /x, ...").
std::string write_config(const std::string& name, const std::string& body,
                         const std::string& coordinator = "") {
  const std::string path = testing::TempDir() + name + ".yaml";
  std::ofstream(path) << "model: {checkpoint: " << kModel << ", dtype: float32}\n"
                      << body
                      << "coordinator: {endpoint: 'ipc://@llava-pipe-test-{pid}', "
                         "heartbeat_interval: 100ms, liveness: 5"
                      << (coordinator.empty() ? "" : ", " + coordinator) << "}\n"
                      << "generation: {max_new_tokens: " << kMaxNewTokens << "}\n";
  return path;
}

const std::string kSequential =
    "mode: sequential\nstages: {vision: {devices: cpu, batch_size: 4}, "
    "language: {devices: cpu, batch_size: 4, max_context: 256}}\n";

// Both stages on the CPU at once (concurrent mode), batches as given (8: the default).
std::string concurrent_cpu(int vision_batch, int language_batch) {
  return "mode: concurrent\nshare_devices: true\nstages: {vision: {devices: cpu, batch_size: " +
         std::to_string(vision_batch) +
         "}, language: {devices: cpu, batch_size: " + std::to_string(language_batch) +
         ", max_context: 256}}\n";
}

std::vector<int32_t> expected_tokens(const llava::Coordinator& c, const Case& item) {
  return llava::test::generate_in_process(c, "USER: {images}{prompt} ASSISTANT:", item.prompt, item.images,
                                          kModel, kMaxNewTokens);
}

struct Outcome {
  std::map<uint64_t, llava::RequestResult> results;
  std::map<uint64_t, int> answers;  // final answers per request: must be exactly one
  std::vector<llava::LeaseEvent> timeline;
  std::vector<llava::StageReport> reports;
  std::vector<std::vector<int32_t>> expected;
  std::vector<uint64_t> ids;
};

// Hooks get the coordinator, to find worker pids at the moment they act.
struct Hooks {
  std::function<void(llava::Coordinator&, uint64_t, const std::string&)> on_text;
  std::function<void(llava::Coordinator&, const llava::LeaseEvent&)> on_lease_event;
};

// Expected tokens are computed for the first `expected_count` cases (the good ones).
Outcome run_pipeline(const std::string& config_path, const std::vector<Case>& cases,
                     Hooks hooks = {}, size_t expected_count = SIZE_MAX) {
  Outcome outcome;
  llava::Coordinator* self = nullptr;
  llava::CoordinatorEvents events;
  events.on_result = [&](const llava::RequestResult& r) {
    outcome.results[r.id] = r;
    ++outcome.answers[r.id];
  };
  if (hooks.on_text) events.on_text = [&](uint64_t id, const std::string& t) { hooks.on_text(*self, id, t); };
  if (hooks.on_lease_event) {
    events.on_lease_event = [&](const llava::LeaseEvent& e) { hooks.on_lease_event(*self, e); };
  }
  llava::Coordinator coordinator(llava::load_config(config_path), events, kBinary + "/llava-stage");
  self = &coordinator;
  for (const auto& item : cases) {
    if (outcome.expected.size() < expected_count) {
      outcome.expected.push_back(expected_tokens(coordinator, item));
    }
    llava::RequestSpec spec;
    spec.prompt = item.prompt;
    spec.image_paths = item.images;
    spec.generation = llava::load_config(config_path).generation;
    outcome.ids.push_back(coordinator.submit(spec));
  }
  coordinator.run();
  coordinator.shutdown_workers();
  outcome.timeline = coordinator.timeline();
  outcome.reports = coordinator.reports();
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

// Every request answered once, each a failure whose error contains `error`.
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

// [grant, end) of each lease, per device: end is "released" (unload) or the process's
// exit or death, whichever comes first after the release was asked.
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

class FaultDelay : public ScopedEnv {  // slows each worker step so that faults land mid-work
 public:
  explicit FaultDelay(int ms) : ScopedEnv("LLAVA_PIPE_FAULT_WORK_DELAY_MS", std::to_string(ms)) {}
};

TEST(Pipeline, SequentialMatchesInProcessGeneration) {
  Outcome outcome = run_pipeline(write_config("sequential", kSequential), kCases);
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

// A chat sends its image again every turn: an image seen before (the same bytes) skips the
// vision stage, its embeddings kept by the coordinator, and the answer is the same. In
// sequential mode the vision worker is not even given the device for the second round.
TEST(Pipeline, ImagesSeenBeforeSkipTheVisionStage) {
  const std::string path = write_config("cache", kSequential);
  std::map<uint64_t, llava::RequestResult> results;
  llava::CoordinatorEvents events;
  events.on_result = [&](const llava::RequestResult& r) { results[r.id] = r; };
  llava::Coordinator coordinator(llava::load_config(path), events, kBinary + "/llava-stage");
  auto round = [&] {
    std::vector<uint64_t> ids;
    for (const auto& item : kCases) {
      llava::RequestSpec spec;
      spec.prompt = item.prompt;
      spec.image_paths = item.images;
      spec.generation = llava::load_config(path).generation;
      ids.push_back(coordinator.submit(spec));
    }
    coordinator.run();
    return ids;
  };
  const std::vector<uint64_t> first = round();
  const int vision_grants = count_events(coordinator.timeline(), "vision-0", "granted");
  EXPECT_GE(vision_grants, 1);
  const pid_t language = coordinator.pid_of("language-0");
  ASSERT_GT(language, 0);
  const size_t lease_events = coordinator.timeline().size();
  const std::vector<uint64_t> second = round();
  // Lazy leases: the language worker kept the device after the first round (nothing else
  // needed it), so the second round, its images all cached, needed no swap at all: not a
  // lease event in between, the same process.
  EXPECT_EQ(coordinator.timeline().size(), lease_events);
  EXPECT_EQ(coordinator.pid_of("language-0"), language);
  coordinator.shutdown_workers();
  EXPECT_EQ(count_events(coordinator.timeline(), "vision-0", "granted"), vision_grants);
  for (size_t i = 0; i < kCases.size(); ++i) {
    const auto& a = results.at(first[i]);
    const auto& b = results.at(second[i]);
    ASSERT_TRUE(a.ok && b.ok) << a.error << b.error;
    EXPECT_EQ(b.tokens, expected_tokens(coordinator, kCases[i])) << "request " << i;
    EXPECT_EQ(a.tokens, b.tokens) << "request " << i;
    EXPECT_EQ(a.cached_images, 0);
    EXPECT_EQ(b.cached_images, static_cast<int>(kCases[i].images.size())) << "request " << i;
  }
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
    auto submit = [&](const Case& item) {
      llava::RequestSpec spec;
      spec.prompt = item.prompt;
      spec.image_paths = item.images;
      spec.generation = llava::load_config(path).generation;
      return coordinator.submit(spec);
    };
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

// Several questions about one image, submitted together: the image is encoded once, the
// other requests wait for its embeddings (cache) instead of encoding it again; every
// answer is exact. In both modes.
TEST(Pipeline, OneImageInRequestsSubmittedTogetherIsEncodedOnce) {
  const std::string concurrent = concurrent_cpu(4, 4);
  for (const std::string& body : {kSequential, concurrent}) {
    std::vector<Case> cases;
    for (const auto& item : kCases) cases.push_back({item.prompt, kCases[0].images});
    Outcome outcome = run_pipeline(write_config("twins", body), cases);
    expect_all_match(outcome);
    int encoded = 0, cached = 0;
    for (const auto& [id, r] : outcome.results) (r.cached_images == 0 ? encoded : cached) += 1;
    EXPECT_EQ(encoded, 1) << body;
    EXPECT_EQ(cached, static_cast<int>(cases.size()) - 1) << body;
  }
}

// Requests submitted together reach the vision worker as one burst, and it encodes them as
// one batch even when its messages arrive one at a time (the fault hook makes it work after
// each): the coordinator tells it how many tasks follow each one. Answers are exact.
TEST(Pipeline, RequestsSubmittedTogetherAreEncodedInOneVisionBatch) {
  const std::string body = concurrent_cpu(8, 4);
  Outcome outcome;
  {
    ScopedEnv one_at_a_time("LLAVA_PIPE_FAULT_ONE_MESSAGE_PER_STEP", "1");
    outcome = run_pipeline(write_config("burst", body), kCases);
  }
  expect_all_match(outcome);
  int images = 0;
  for (const auto& item : kCases) images += static_cast<int>(item.images.size());
  ASSERT_EQ(images, 5);
  for (size_t i = 0; i < kCases.size(); ++i) {
    const auto& r = outcome.results.at(outcome.ids[i]);
    EXPECT_EQ(r.vision_batch_images, kCases[i].images.empty() ? 0 : images) << "request " << i;
  }
}

// A prompt may place its images itself, one <image> per image, as transformers' LLaVA
// prompts do: the answer is exact (embeddings spliced mid-prompt). A prompt whose
// placeholders do not match its images is refused at submission, naming both counts.
TEST(Pipeline, PromptThatPlacesItsImagesIsExactAndAMismatchIsRefusedAtOnce) {
  const std::vector<Case> cases = {
      {"Compare <image> with this one: <image>\nWhich is brighter?",
       {kImages + "img02_240x320_RGB.jpg", kImages + "img09_400x300_L.jpg"}},
      {"What is <image> and <image>?", {kImages + "img01_320x240_RGB.jpg"}},
  };
  Outcome outcome = run_pipeline(write_config("placed", kSequential), cases, {}, 1);
  const auto& placed = outcome.results.at(outcome.ids[0]);
  ASSERT_TRUE(placed.ok) << placed.error;
  EXPECT_EQ(placed.tokens, outcome.expected[0]);
  const auto& mismatched = outcome.results.at(outcome.ids[1]);
  EXPECT_FALSE(mismatched.ok);
  EXPECT_NE(mismatched.error.find("the prompt has 2 <image> placeholders for 1 image"),
            std::string::npos)
      << mismatched.error;
  EXPECT_EQ(mismatched.attempts, 1);
}

// A stop string ends the answer where it first appears: the text, streamed and final,
// ends just before it, the finish reason is "stop", and the language worker drops the
// request (its one KV slot then serves the next request, whose answer is exact).
TEST(Pipeline, StopStringEndsTheAnswerJustBeforeIt) {
  const std::string path = write_config("stop", concurrent_cpu(8, 1));
  std::map<uint64_t, llava::RequestResult> results;
  std::map<uint64_t, std::string> streamed;
  llava::CoordinatorEvents events;
  events.on_result = [&](const llava::RequestResult& r) { results[r.id] = r; };
  events.on_text = [&](uint64_t id, const std::string& text) { streamed[id] += text; };
  llava::Coordinator coordinator(llava::load_config(path), events, kBinary + "/llava-stage");
  auto submit = [&](const Case& item, const std::vector<std::string>& stop) {
    llava::RequestSpec spec;
    spec.prompt = item.prompt;
    spec.image_paths = item.images;
    spec.generation = llava::load_config(path).generation;
    spec.generation.stop = stop;
    return coordinator.submit(spec);
  };
  const uint64_t plain = submit(kCases[0], {});
  coordinator.run();
  const std::string full = results.at(plain).text;
  EXPECT_EQ(streamed[plain], full);  // every byte streamed, the last ones at the end too
  ASSERT_GE(full.size(), 8u) << full;
  const std::string stop = full.substr(full.size() / 2, 3);
  const std::string expected = full.substr(0, full.find(stop));
  const uint64_t stopped = submit(kCases[0], {"never in this text \x01", stop});
  const uint64_t next = submit(kCases[3], {});
  coordinator.run();
  coordinator.shutdown_workers();
  const auto& r = results.at(stopped);
  EXPECT_TRUE(r.ok) << r.error;
  EXPECT_EQ(r.finish, "stop");
  EXPECT_EQ(r.text, expected);
  EXPECT_EQ(streamed[stopped], expected);
  EXPECT_LE(r.tokens.size(), results.at(plain).tokens.size());
  EXPECT_EQ(results.at(next).tokens, expected_tokens(coordinator, kCases[3]));
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

// Streaming every decoder layer from host memory changes where weights live, not what
// the model computes: the same tokens as the resident in-process run.
TEST(Pipeline, LanguageWorkerStreamingItsLayersMatchesInProcessGeneration) {
  std::string config = kSequential;
  config.replace(config.find("max_context: 256}"), 17, "max_context: 256, offload: layers}");
  Outcome outcome = run_pipeline(write_config("offload", config), kCases);
  expect_all_match(outcome);
  expect_no_deaths(outcome);
}

// Over tcp:// with CURVE: the coordinator lets in the workers it starts (their key is on
// its allow-list) and the answers are the same.
TEST(Pipeline, CurveEncryptedTcpMatchesInProcessGeneration) {
  llava::write_curve_key(testing::TempDir() + "coordinator", llava::generate_curve_key());
  llava::write_curve_key(testing::TempDir() + "worker", llava::generate_curve_key());
  const std::string path = testing::TempDir() + "curve.yaml";
  std::ofstream(path) << "model: {checkpoint: " << kModel << ", dtype: float32}\n"
                      << "mode: concurrent\nshare_devices: true\n"
                      << "stages: {vision: {devices: cpu}, language: {devices: cpu, max_context: 256}}\n"
                      << "coordinator:\n  endpoint: 'tcp://127.0.0.1:*'\n  heartbeat_interval: 100ms\n"
                      << "  liveness: 5\n  curve: {server_key: coordinator.key_secret, worker_key: worker.key_secret}\n"
                      << "generation: {max_new_tokens: " << kMaxNewTokens << "}\n";
  Outcome outcome = run_pipeline(path, kCases);
  expect_all_match(outcome);
  expect_no_deaths(outcome);
}

// Workers a cluster manager starts (here: this test), on a fixed endpoint.
class ExternalWorkers {
 public:
  // `coordinator` adds keys to the coordinator section; `liveness` x 100 ms of silence
  // declares a worker dead (coordinator) or the coordinator gone (worker).
  ExternalWorkers(const std::string& name, const std::string& stages_yaml,
                  const std::string& coordinator = "", int liveness = 5) {
    endpoint_ = "ipc://@llava-external-" + name + "-" + std::to_string(getpid());
    path_ = testing::TempDir() + name + ".yaml";
    std::ofstream(path_) << "model: {checkpoint: " << kModel << ", dtype: float32}\n"
                         << "mode: concurrent\nshare_devices: true\n"
                         << stages_yaml << "coordinator: {endpoint: '" << endpoint_
                         << "', heartbeat_interval: 100ms, liveness: " << liveness
                         << (coordinator.empty() ? "" : ", " + coordinator) << "}\n"
                         << "generation: {max_new_tokens: " << kMaxNewTokens << "}\n";
  }
  ~ExternalWorkers() {
    for (auto& [name, pid] : pids_) llava::stop_process(pid, 0);
  }
  pid_t start(const std::string& stage, int replica) {
    const pid_t pid = llava::start_process(kBinary + "/llava-stage",
                                           {"--config", path_, "--stage", stage, "--replica",
                                            std::to_string(replica), "--endpoint", endpoint_});
    pids_[stage + "-" + std::to_string(replica)] = pid;
    return pid;
  }
  bool alive(const std::string& process) const {
    return waitpid(pids_.at(process), nullptr, WNOHANG) == 0;
  }
  pid_t pid(const std::string& process) const { return pids_.at(process); }
  const std::string& config() const { return path_; }

 private:
  std::string endpoint_, path_;
  std::map<std::string, pid_t> pids_;
};

// The coordinator neither starts nor stops external workers: they outlive it, give the
// device back, and register with the next coordinator on the same endpoint.
TEST(Pipeline, ExternalWorkersOutliveTheCoordinatorAndRegisterWithTheNext) {
  // Each coordinator must see each worker register exactly once: 2 s of silence before
  // either side gives up (not 0.5 s), so a machine loaded by sanitizers does not make a
  // slow reply look like a lost coordinator (this failed once in three ASan runs).
  ExternalWorkers workers("restart",
                          "stages: {vision: {devices: cpu, launch: external}, "
                          "language: {devices: cpu, max_context: 256, launch: external}}\n",
                          "", 20);
  workers.start("vision", 0);
  workers.start("language", 0);
  Outcome first = run_pipeline(workers.config(), kCases);
  expect_all_match(first);
  EXPECT_EQ(count_events(first.timeline, "language-0", "started"), 0);  // never started here
  EXPECT_EQ(count_events(first.timeline, "language-0", "registered"), 1);
  EXPECT_TRUE(workers.alive("vision-0"));
  EXPECT_TRUE(workers.alive("language-0"));
  Outcome second = run_pipeline(workers.config(), kCases);  // a new coordinator
  expect_all_match(second);
  EXPECT_EQ(count_events(second.timeline, "vision-0", "registered"), 1);
  EXPECT_EQ(count_events(second.timeline, "language-0", "registered"), 1);
}

// SIGSTOP a language worker mid-generation: it is declared dead and its requests resume
// on the other replica; after SIGCONT its late replies are dropped (request id + attempt)
// and it registers again. Every request gets its one exact answer.
TEST(Pipeline, StalledExternalWorkerIsReplacedAndItsLateRepliesAreDropped) {
  FaultDelay delay(30);
  ExternalWorkers workers("stall", "stages: {vision: {devices: cpu, launch: external}, "
                                   "language: {replicas: 2, devices: cpu, max_context: 256, launch: external}}\n");
  workers.start("vision", 0);
  workers.start("language", 0);
  workers.start("language", 1);
  std::vector<Case> cases = kCases;
  cases.insert(cases.end(), kCases.begin(), kCases.end());
  bool stopped = false, resumed = false;
  Hooks hooks;
  hooks.on_text = [&](llava::Coordinator&, uint64_t, const std::string&) {
    if (!stopped) {
      stopped = true;
      kill(workers.pid("language-0"), SIGSTOP);
    }
  };
  hooks.on_lease_event = [&](llava::Coordinator&, const llava::LeaseEvent& e) {
    if (e.process == "language-0" && e.what == "died" && !resumed) {
      resumed = true;
      kill(workers.pid("language-0"), SIGCONT);
    }
  };
  Outcome outcome = run_pipeline(workers.config(), cases, hooks);
  expect_all_match(outcome);
  EXPECT_TRUE(stopped);
  EXPECT_TRUE(resumed);
  EXPECT_GE(count_events(outcome.timeline, "language-0", "died"), 1);
  EXPECT_TRUE(workers.alive("language-0"));
}

// A stage whose only worker is external and never registers: once external_wait has
// passed, every request that needs it fails with a reason that names the missing worker,
// and the run ends instead of waiting for a process nobody starts.
TEST(Pipeline, ExternalStageThatNobodyStartsFailsItsRequestsAfterTheWait) {
  ExternalWorkers workers("absent",
                          "stages: {vision: {devices: cpu}, "
                          "language: {devices: cpu, max_context: 256, launch: external}}\n",
                          "external_wait: 300ms");
  Outcome outcome = run_pipeline(workers.config(), kCases, {}, 0);
  ASSERT_EQ(outcome.ids.size(), kCases.size());
  expect_all_failed_with(outcome, "language stage: no worker registered as language-0 for 300 ms");
  EXPECT_EQ(count_events(outcome.timeline, "language-0", "registered"), 0);
}

// `llava-pipe serve`: a client that disconnects mid-answer has its request cancelled
// (its KV slot and queue place freed), and the next client gets its exact answer.
TEST(Pipeline, ServeCancelsTheRequestOfAClientThatDisconnects) {
  FaultDelay delay(30);  // the server's workers inherit it: answers take a while
  const std::string config = write_config("serve", concurrent_cpu(8, 1));
  const std::string listen = "ipc://@llava-serve-test-" + std::to_string(getpid());
  const std::string log = testing::TempDir() + "serve.log";
  const pid_t server = llava::start_process(
      "/bin/sh", {"-c", "exec " + kBinary + "/llava-pipe serve " + config + " --listen " + listen + " 2> " + log});
  zmq::context_t context;
  auto request = [&](zmq::socket_t& socket, const nlohmann::json& body, const std::vector<std::string>& images) {
    std::vector<zmq::message_t> parts;
    parts.emplace_back(body.dump());
    for (const auto& path : images) {
      std::ifstream in(path, std::ios::binary);
      parts.emplace_back(std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()));
    }
    llava::send_parts(socket, std::move(parts));
  };
  {  // client A: one streamed piece of text, then gone
    auto a = llava::connect_dealer(context, listen, llava::TransportOptions{});
    request(a, {{"id", "a"}, {"prompt", "What is the capital of France?"}, {"max_new_tokens", 200}}, {});
    auto first = llava::receive_parts(a, std::chrono::milliseconds(60000));
    ASSERT_TRUE(first);
    EXPECT_TRUE(nlohmann::json::parse(first->back().to_string()).contains("text"));
  }
  // Client B, with the one KV slot A held.
  auto b = llava::connect_dealer(context, listen, llava::TransportOptions{});
  {  // First a request that is not UTF-8: an error reply, whose text quoted the byte and
     // used to end the server.
    std::vector<zmq::message_t> parts;
    parts.emplace_back(std::string("{\"id\": \"bad\", \"prompt\": \"a\xff\"}"));
    llava::send_parts(b, std::move(parts));
    auto reply = llava::receive_parts(b, std::chrono::milliseconds(60000));
    ASSERT_TRUE(reply);
    const auto refused = nlohmann::json::parse(reply->back().to_string());
    EXPECT_FALSE(refused["ok"].get<bool>()) << refused.dump();
    EXPECT_NE(refused["error"].get<std::string>().find("ill-formed UTF-8"), std::string::npos)
        << refused.dump();
  }
  request(b, {{"id", "b"}, {"prompt", kCases[0].prompt}}, kCases[0].images);
  nlohmann::json done;
  while (auto reply = llava::receive_parts(b, std::chrono::milliseconds(60000))) {
    done = nlohmann::json::parse(reply->back().to_string());
    if (done.value("done", false)) break;
  }
  ASSERT_TRUE(done.value("done", false)) << done.dump();
  EXPECT_TRUE(done["ok"].get<bool>()) << done.dump();
  EXPECT_EQ(done["id"], "b");
  llava::Coordinator reference(llava::load_config(config), {}, kBinary + "/llava-stage");
  EXPECT_EQ(done["tokens"].get<std::vector<int32_t>>(), expected_tokens(reference, kCases[0]));
  // The command-line client: the same answer's text, exit code 0; a bad request: 1.
  const std::string ask = kBinary + "/llava-pipe ask " + listen + " --prompt '" + kCases[0].prompt +
                          "' --image " + kCases[0].images[0];
  EXPECT_EQ(llava::test::run_command(ask + " 2>&1"), done["text"].get<std::string>() + "\n");
  // A bad flag is refused before anything is sent, naming the flag: usage exit code.
  EXPECT_NE(llava::test::run_command(ask + " --max-new-tokens 0 2>&1; echo rc=$?")
                .find("--max-new-tokens 0: max_new_tokens: 0 is out of range [1, 1048576]\nrc=2"),
            std::string::npos);
  // A prompt that is not UTF-8 cannot become a JSON request: said plainly, usage exit code.
  const std::string not_utf8 =
      kBinary + "/llava-pipe ask " + listen + " --prompt 'a\xff' 2>&1; echo rc=$?";
  EXPECT_NE(llava::test::run_command(not_utf8).find("check --prompt and --stop\nrc=2"),
            std::string::npos);
  kill(server, SIGTERM);
  EXPECT_EQ(llava::stop_process(server, 10000).code, 0);
  std::ifstream in(log);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("request 1: the client disconnected; cancelled"), std::string::npos) << text;
}

// `llava-pipe serve` with CURVE (here over ipc://; tcp:// is the same handshake): a listed
// client gets its exact answer; a client with an unlisted key, one without CURVE and one
// that trusts the wrong server key are told that the handshake failed (exit 1) instead of
// waiting for an answer that cannot come.
TEST(Pipeline, ServeWithCurveAnswersListedClientsAndTellsTheOthersWhy) {
  const std::string keys = testing::TempDir() + "serve-curve-";
  for (const char* name : {"server", "client", "stranger", "impostor"}) {
    llava::write_curve_key(keys + name, llava::generate_curve_key());
  }
  const std::string config = write_config("serve-curve", concurrent_cpu(8, 8));
  const std::string listen = "ipc://@llava-serve-curve-" + std::to_string(getpid());
  const pid_t server = llava::start_process(
      "/bin/sh", {"-c", "exec " + kBinary + "/llava-pipe serve " + config + " --listen " + listen +
                            " --curve-key " + keys + "server.key_secret --allow " + keys +
                            "client.key 2> " + testing::TempDir() + "serve-curve.log"});
  const std::string ask = kBinary + "/llava-pipe ask " + listen + " --prompt '" + kCases[0].prompt +
                          "' --image " + kCases[0].images[0];
  auto as = [&](const std::string& trusted_server, const std::string& own) {
    return llava::test::run_command(ask + " --curve-server " + keys + trusted_server +
                                    ".key --curve-key " + keys + own +
                                    ".key_secret 2>&1; echo rc=$?");
  };
  llava::Coordinator reference(llava::load_config(config), {}, kBinary + "/llava-stage");
  const std::string expected = reference.tokenizer().decode(expected_tokens(reference, kCases[0]));
  EXPECT_EQ(as("server", "client"), expected + "\nrc=0\n");
  EXPECT_NE(as("server", "stranger").find("refused this client's key (ZAP status 400)\nrc=1"),
            std::string::npos);
  EXPECT_NE(as("impostor", "client").find("closed the connection during the handshake"),
            std::string::npos);
  // Without CURVE: the server hangs up, or this client sees the mismatch first.
  const std::string plain = llava::test::run_command(ask + " 2>&1; echo rc=$?");
  EXPECT_NE(plain.find("handshake"), std::string::npos) << plain;
  EXPECT_NE(plain.find("\nrc=1"), std::string::npos) << plain;
  EXPECT_NE(
      llava::test::run_command(ask + " --curve-key " + keys + "client.key_secret 2>&1; echo rc=$?")
          .find("--curve-server and --curve-key go together\nrc=2"),
      std::string::npos);
  kill(server, SIGTERM);
  EXPECT_EQ(llava::stop_process(server, 10000).code, 0);
}

TEST(Pipeline, ConcurrentMatchesInProcessGeneration) {
  Outcome outcome = run_pipeline(write_config("concurrent", concurrent_cpu(8, 8)), kCases);
  expect_all_match(outcome);
  expect_no_deaths(outcome);
  EXPECT_GT(first_event(outcome.timeline, "vision-0", "granted"), 0);
  EXPECT_GT(first_event(outcome.timeline, "language-0", "granted"), 0);
}

// What /health reports: "loading" until each stage's worker has loaded its weights, then
// ready; a killed worker makes its stage unavailable, naming it, until its replacement loads.
TEST(Pipeline, UnavailableReasonFollowsLoadingDeathAndRestart) {
  llava::Coordinator coordinator(llava::load_config(write_config("health", concurrent_cpu(2, 2))), {},
                                 kBinary + "/llava-stage");
  EXPECT_EQ(coordinator.unavailable_reason().rfind("loading: ", 0), 0u) << coordinator.unavailable_reason();
  // Steps until `done` holds; false after 60 s.
  auto step_until = [&](const std::function<bool()>& done) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      coordinator.step(std::chrono::milliseconds(20));
    }
    return true;
  };
  ASSERT_TRUE(step_until([&] { return coordinator.unavailable_reason().empty(); }))
      << coordinator.unavailable_reason();
  ASSERT_GT(coordinator.pid_of("language-0"), 0);
  kill(coordinator.pid_of("language-0"), SIGKILL);
  std::string seen;
  ASSERT_TRUE(step_until([&] {
    seen = coordinator.unavailable_reason();
    return !seen.empty();
  }));
  EXPECT_NE(seen.find("language stage"), std::string::npos) << seen;
  EXPECT_TRUE(step_until([&] { return coordinator.unavailable_reason().empty(); }))
      << coordinator.unavailable_reason();
  coordinator.shutdown_workers();
}

// Another thread's wake() ends the loop's wait at once (the HTTP server hands it requests
// this way). Sequential mode with no work starts no worker, so nothing else would end a
// 60 s wait early.
TEST(Pipeline, WakeEndsTheLoopsWaitFromAnotherThread) {
  llava::Coordinator coordinator(llava::load_config(write_config("wake", kSequential)), {},
                                 kBinary + "/llava-stage");
  for (int round = 0; round < 3; ++round) {
    std::thread waker([&] { coordinator.wake(); });
    const auto start = std::chrono::steady_clock::now();
    EXPECT_TRUE(coordinator.step(std::chrono::seconds(60)));
    waker.join();
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30)) << round;
  }
  EXPECT_EQ(coordinator.pid_of("vision-0"), -1);  // nothing else happened
}

// mode: auto on the CPU (nothing is leased there) runs the stages together: both workers
// hold their device from the start and neither gives it back; the answers are exact. The
// workers resolve the same file alike (their batch and limits are the coordinator's).
TEST(Pipeline, AutoModeOnTheCpuRunsTheStagesTogether) {
  std::string body = kSequential;
  body.replace(body.find("mode: sequential"), 16, "mode: auto");
  Outcome outcome = run_pipeline(write_config("auto", body), kCases);
  expect_all_match(outcome);
  expect_no_deaths(outcome);
  EXPECT_EQ(count_events(outcome.timeline, "vision-0", "granted"), 1);
  EXPECT_EQ(count_events(outcome.timeline, "language-0", "granted"), 1);
  // Sequential turns would grant the language worker only after the vision worker gave
  // the device back (at shutdown here, if at all).
  const double language = first_event(outcome.timeline, "language-0", "granted");
  ASSERT_GE(language, 0);
  for (const char* end : {"released", "exited"}) {
    const double vision_end = first_event(outcome.timeline, "vision-0", end);
    EXPECT_TRUE(vision_end < 0 || language < vision_end) << end;
  }
}

TEST(Pipeline, TwoVisionAndTwoLanguageReplicasMatch) {
  std::vector<Case> cases = kCases;
  cases.insert(cases.end(), kCases.begin(), kCases.end());
  Outcome outcome = run_pipeline(
      write_config("replicas", "mode: concurrent\nshare_devices: true\nstages: {vision: {replicas: 2, "
                               "devices: cpu, batch_size: 2}, language: {replicas: 2, devices: cpu, "
                               "batch_size: 2, max_context: 256}}\n"),
      cases);
  expect_all_match(outcome);
  expect_no_deaths(outcome);
  // All four run; which of them gets work depends on how fast each process starts.
  for (const char* process : {"vision-0", "vision-1", "language-0", "language-1"}) {
    EXPECT_GE(first_event(outcome.timeline, process, "started"), 0) << process;
  }
}

TEST(Pipeline, EmbeddingsPastTheMemoryBoundAreSpilledAndReadBack) {
  const std::string spill = testing::TempDir() + "pipeline-spill";
  std::system(("mkdir -p " + spill).c_str());
  Outcome outcome = run_pipeline(
      write_config("spill", kSequential, "embedding_memory: 1KiB, spill_dir: " + spill), kCases);
  expect_all_match(outcome);
  EXPECT_TRUE(std::filesystem::is_empty(spill));  // every spill file removed
}

TEST(Pipeline, AWorkerThatKeepsDyingFailsItsRequestsWithTheReason) {
  FaultDelay delay(20);
  const std::string path = write_config("no-restarts", kSequential, "max_restarts_per_minute: 0");
  Hooks hooks;
  hooks.on_text = [&](llava::Coordinator& c, uint64_t, const std::string&) {
    if (c.pid_of("language-0") > 0) kill(c.pid_of("language-0"), SIGKILL);
  };
  Outcome outcome = run_pipeline(path, kCases, hooks, 0);
  expect_all_failed_with(outcome,
                         "language stage: language-0 failed 1 times in 1 min (last: killed by signal 9)");
}

TEST(Pipeline, CancelledRequestGetsOneAnswerAndTheOthersGoOn) {
  FaultDelay delay(10);
  uint64_t cancelled = 0;
  Hooks hooks;
  hooks.on_text = [&](llava::Coordinator& c, uint64_t id, const std::string&) {
    if (cancelled == 0) {
      cancelled = id;
      EXPECT_TRUE(c.cancel(id));
      EXPECT_FALSE(c.cancel(id));  // already answered
    }
  };
  Outcome outcome = run_pipeline(write_config("cancel", kSequential), kCases, hooks);
  ASSERT_NE(cancelled, 0u);
  for (size_t i = 0; i < outcome.ids.size(); ++i) {
    const uint64_t id = outcome.ids[i];
    ASSERT_EQ(outcome.answers.at(id), 1) << i;
    const auto& r = outcome.results.at(id);
    if (id == cancelled) {
      EXPECT_FALSE(r.ok);
      EXPECT_EQ(r.error, "cancelled by the client");
    } else {
      EXPECT_TRUE(r.ok) << r.error;
      EXPECT_EQ(r.tokens, outcome.expected[i]);
    }
  }
  expect_no_deaths(outcome);
}

TEST(Pipeline, StopDrainsWorkInFlightAndEndsTheRestExplicitly) {
  FaultDelay delay(100);
  Hooks hooks;
  hooks.on_lease_event = [&](llava::Coordinator&, const llava::LeaseEvent& e) {
    if (e.process == "vision-0" && e.what == "granted") llava::Coordinator::request_stop();  // as SIGTERM does
  };
  Outcome outcome = run_pipeline(write_config("drain", concurrent_cpu(1, 8)), kCases, hooks);
  int finished = 0, cut = 0;
  for (size_t i = 0; i < outcome.ids.size(); ++i) {
    ASSERT_EQ(outcome.answers.at(outcome.ids[i]), 1) << i;
    const auto& r = outcome.results.at(outcome.ids[i]);
    if (r.ok) {
      ++finished;
      EXPECT_EQ(r.tokens, outcome.expected[i]) << i;
    } else {
      ++cut;
      EXPECT_EQ(r.error, "cancelled: the pipeline is shutting down") << i;
      EXPECT_EQ(r.error_kind, llava::ErrorKind::kUnavailable) << i;
    }
  }
  EXPECT_GE(finished, 1);  // what the vision worker had when the stop came went through
  EXPECT_GE(cut, 1);       // what it had not been given ended at once
}

TEST(Pipeline, FullQueueRefusesNewRequestsExplicitly) {
  Outcome outcome = run_pipeline(write_config("overload", kSequential, "queue_capacity: 2"), kCases, {}, 2);
  for (size_t i = 0; i < outcome.ids.size(); ++i) {
    const auto& r = outcome.results.at(outcome.ids[i]);
    if (i < 2) {
      EXPECT_TRUE(r.ok) << r.error;
      EXPECT_EQ(r.tokens, outcome.expected[i]);
    } else {
      EXPECT_FALSE(r.ok);
      EXPECT_EQ(r.error.rfind("overloaded: 2 requests are waiting (coordinator.queue_capacity 2)", 0), 0u)
          << r.error;
      EXPECT_EQ(r.error_kind, llava::ErrorKind::kOverloaded);
    }
  }
}

TEST(Pipeline, StickyDeviceErrorEndsTheWorkerWhichIsRestartedAndResumes) {
  const std::string once = testing::TempDir() + "sticky-once";
  std::ofstream(once) << "armed";
  Outcome outcome;
  {
    ScopedEnv sticky("LLAVA_PIPE_FAULT_STICKY_AFTER_STEPS", "3");
    ScopedEnv fire_once("LLAVA_PIPE_FAULT_ONCE", once);
    outcome = run_pipeline(write_config("sticky", kSequential), kCases);
  }
  EXPECT_FALSE(std::filesystem::exists(once));  // the fault fired
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
  EXPECT_EQ(r.error,
            "language stage: language model: language-0 on cpu: out of memory prefilling this request's "
            "prompt (Tried to allocate 20.00 MiB); memory_limit none: lower stages.language.batch_size or "
            "max_context, or set quantize: int8 (or int4) or offload: layers, or raise memory_limit");
  EXPECT_EQ(r.error_kind, llava::ErrorKind::kInternal);
  expect_no_deaths(outcome);
}

TEST(Pipeline, PromptLongerThanTheContextFailsAlone) {
  std::vector<Case> cases = {kCases[0], {std::string(3000, 'x') + " why?", {}}};
  Outcome outcome = run_pipeline(write_config("long-prompt", kSequential), cases, {}, 1);
  EXPECT_TRUE(outcome.results.at(outcome.ids[0]).ok);
  EXPECT_EQ(outcome.results.at(outcome.ids[0]).tokens, outcome.expected[0]);
  const auto& r = outcome.results.at(outcome.ids[1]);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.error.find("the context holds 256"), std::string::npos) << r.error;
  EXPECT_EQ(r.error_kind, llava::ErrorKind::kBadRequest);
}

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

TEST(Pipeline, CorruptAndMissingImagesFailAloneWithTheirReason) {
  const std::string corrupt = testing::TempDir() + "corrupt.jpg";
  std::ofstream(corrupt) << "\xff\xd8\xff\xe0 this is not really a JPEG";
  std::vector<Case> cases = kCases;
  cases.push_back({"Bad one.", {corrupt}});
  cases.push_back({"Missing one.", {kImages + "no-such-image.png"}});
  Outcome outcome = run_pipeline(write_config("bad-images", kSequential), cases, {}, kCases.size());
  for (size_t i = 0; i < kCases.size(); ++i) {
    const auto& r = outcome.results.at(outcome.ids[i]);
    EXPECT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.tokens, outcome.expected[i]);
  }
  const auto& bad = outcome.results.at(outcome.ids[kCases.size()]);
  EXPECT_FALSE(bad.ok);
  EXPECT_EQ(bad.error.rfind("vision stage: image 1 of 1: ", 0), 0u) << bad.error;
  EXPECT_EQ(bad.error_kind, llava::ErrorKind::kBadRequest);  // the worker says whose fault it is
  const auto& missing = outcome.results.at(outcome.ids[kCases.size() + 1]);
  EXPECT_FALSE(missing.ok);
  EXPECT_NE(missing.error.find("cannot read image '"), std::string::npos) << missing.error;
  EXPECT_NE(missing.error.find("No such file or directory"), std::string::npos);
  EXPECT_EQ(missing.error_kind, llava::ErrorKind::kBadRequest);
}

TEST(Pipeline, CheckpointThatCannotLoadFailsTheRunWithTheLoaderMessage) {
  // tiny-llava's config with tiny-llava-b's weights: the projector's shapes differ.
  const std::string folder = testing::TempDir() + "mismatched-llava";
  std::system(("rm -rf " + folder + " && mkdir -p " + folder + " && cp " + kModel + "/*.json " +
               kModel + "/tokenizer.model " + folder + "/ && cp " + kSource +
               "/tests/data/tiny-llava-b/model.safetensors " + folder + "/")
                  .c_str());
  const std::string path = testing::TempDir() + "mismatched.yaml";
  std::ofstream(path) << "model: {checkpoint: " << folder << ", dtype: float32}\n" << kSequential
                      << "coordinator: {endpoint: 'ipc://@llava-pipe-test-{pid}', heartbeat_interval: 100ms}\n";
  const std::string output = run_command(kBinary + "/llava-pipe run " + path +
                                         " --prompt hello --image " + kImages +
                                         "img00_64x48_RGB.png 2>&1; echo exit=$?");
  EXPECT_NE(output.find("cannot load the vision stage"), std::string::npos) << output;
  EXPECT_NE(output.find("'multi_modal_projector.linear_1.weight' has shape [64, 64], expected [64, 32]"),
            std::string::npos)
      << output;
  EXPECT_NE(output.find("exit=1"), std::string::npos) << output;
}

TEST(Pipeline, AWorkerProgramThatCannotStartEndsTheRunWithItsPath) {
  llava::CoordinatorEvents events;
  int answers = 0;
  events.on_result = [&](const llava::RequestResult& r) {
    ++answers;
    EXPECT_NE(r.error.find("cannot start the worker program /nonexistent/llava-stage"), std::string::npos)
        << r.error;
  };
  llava::Coordinator coordinator(llava::load_config(write_config("no-program", kSequential)), events,
                                 "/nonexistent/llava-stage");
  llava::RequestSpec spec;
  spec.prompt = "hello";
  spec.generation.max_new_tokens = 2;
  coordinator.submit(spec);
  coordinator.run();  // returns: the failure is fatal, not restarted forever
  EXPECT_TRUE(coordinator.failed());
  EXPECT_EQ(answers, 1);
}

TEST(Pipeline, PortInUseFailsFastBeforeAnyWorkerStarts) {
  zmq::context_t context;
  zmq::socket_t squatter(context, zmq::socket_type::router);
  squatter.bind("tcp://127.0.0.1:*");
  const std::string endpoint = squatter.get(zmq::sockopt::last_endpoint);
  const std::string path = testing::TempDir() + "port-in-use.yaml";
  std::ofstream(path) << "model: {checkpoint: " << kModel << ", dtype: float32}\n" << kSequential
                      << "coordinator: {endpoint: '" << endpoint << "'}\n";
  const std::string output = run_command(kBinary + "/llava-pipe run " + path +
                                         " --verbose --prompt hello 2>&1; echo exit=$?");
  EXPECT_NE(output.find("Address already in use"), std::string::npos) << output;
  EXPECT_EQ(output.find("started"), std::string::npos) << output;  // no worker was started
  EXPECT_NE(output.find("exit=1"), std::string::npos) << output;
}

TEST(Pipeline, BatchFileWithBadLinesAnswersEveryLineInOrder) {
  const std::string in = testing::TempDir() + "batch.jsonl";
  const std::string out = testing::TempDir() + "batch-out.jsonl";
  std::string many = "[";
  for (int i = 0; i < 17; ++i) many += std::string(i ? ", " : "") + "\"" + kImages + "img00_64x48_RGB.png\"";
  many += "]";
  std::ofstream(in) << R"({"id": "a", "image": ")" << kImages
                    << R"(img00_64x48_RGB.png", "prompt": "Describe."})"
                    << "\n"
                    << "{not json\n"
                    << R"({"id": "c", "prompt": "x", "colour": "red"})"
                    << "\n"
                    << R"({"id": "d", "images": )" << many << R"(, "prompt": "Too many."})"
                    << "\n"
                    << R"({"id": "e", "prompt": "Text only.", "max_new_tokens": 3})"
                    << "\n"
                    // A byte that is not UTF-8: its error quotes it (this line used to end the
                    // whole run with no output).
                    << "{\"id\": \"f\", \"prompt\": \"a\xff\"}\n";
  const std::string output = run_command(kBinary + "/llava-pipe run " + write_config("batch", kSequential) +
                                         " --requests " + in + " --output " + out + " 2>&1; echo exit=$?");
  EXPECT_NE(output.find("exit=3"), std::string::npos) << output;  // some lines failed
  EXPECT_NE(output.find("4 of 6 requests failed"), std::string::npos) << output;
  std::ifstream lines(out);
  std::vector<std::string> got;
  for (std::string line; std::getline(lines, line);) got.push_back(line);
  ASSERT_EQ(got.size(), 6u) << output;
  EXPECT_NE(got[0].find(R"("id":"a","line":1,"ok":true)"), std::string::npos) << got[0];
  EXPECT_NE(got[1].find(in + ":2: not a valid request"), std::string::npos) << got[1];
  EXPECT_NE(got[2].find(in + ":3: unknown key 'colour'"), std::string::npos) << got[2];
  EXPECT_NE(got[3].find("17 images; at most 16 per request"), std::string::npos) << got[3];
  EXPECT_NE(got[4].find(R"("generated_tokens":3,"id":"e","line":5,"ok":true)"), std::string::npos) << got[4];
  EXPECT_NE(got[5].find(in + ":6: not a valid request"), std::string::npos) << got[5];
  EXPECT_NO_THROW(nlohmann::json::parse(got[5])) << got[5];
}

// Starts `llava-pipe run --verbose` on a slow pipeline and returns its pid and the pids of
// its workers once both have started (read from its stderr).
struct Launched {
  pid_t pipe_pid;
  std::vector<pid_t> workers;
  FILE* stderr_stream;
};

Launched launch_slow_run(const std::string& config) {
  int fds[2];
  EXPECT_EQ(pipe(fds), 0);
  setenv("LLAVA_PIPE_FAULT_WORK_DELAY_MS", "50", 1);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], STDERR_FILENO);
    close(fds[0]);
    int null = open("/dev/null", O_WRONLY);
    dup2(null, STDOUT_FILENO);
    execl((kBinary + "/llava-pipe").c_str(), "llava-pipe", "run", config.c_str(), "--verbose",
          "--prompt", "Tell me a long story.", "--max-new-tokens", "200", nullptr);
    _exit(127);
  }
  unsetenv("LLAVA_PIPE_FAULT_WORK_DELAY_MS");
  close(fds[1]);
  Launched launched{pid, {}, fdopen(fds[0], "r")};
  char line[512];
  // A text-only request: the language worker starts and generates for ~10 s.
  while (launched.workers.empty() && fgets(line, sizeof line, launched.stderr_stream)) {
    const char* at = strstr(line, "started on cpu: pid ");
    if (at) launched.workers.push_back(static_cast<pid_t>(std::atoi(at + 20)));
  }
  while (fgets(line, sizeof line, launched.stderr_stream)) {
    if (strstr(line, "granted")) break;  // the worker holds its lease: it is generating
  }
  return launched;
}

bool process_gone(pid_t pid) {
  // Polled: a process's end cannot be waited on from a non-parent. Bounded at 10 s.
  for (int i = 0; i < 1000; ++i) {
    if (kill(pid, 0) != 0 && errno == ESRCH) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

TEST(Pipeline, SigtermStopsEveryWorker) {
  Launched run = launch_slow_run(write_config("sigterm", kSequential, "drain_timeout: 300ms"));
  ASSERT_EQ(run.workers.size(), 1u);
  kill(run.pipe_pid, SIGTERM);
  int status = 0;
  waitpid(run.pipe_pid, &status, 0);
  fclose(run.stderr_stream);
  EXPECT_TRUE(WIFEXITED(status)) << "llava-pipe did not exit on its own";
  for (pid_t worker : run.workers) EXPECT_TRUE(process_gone(worker)) << "orphan worker " << worker;
}

TEST(Pipeline, CoordinatorKilledTakesItsWorkersDown) {
  Launched run = launch_slow_run(write_config("kill-coordinator", kSequential));
  ASSERT_EQ(run.workers.size(), 1u);
  kill(run.pipe_pid, SIGKILL);
  waitpid(run.pipe_pid, nullptr, 0);
  fclose(run.stderr_stream);
  for (pid_t worker : run.workers) EXPECT_TRUE(process_gone(worker)) << "orphan worker " << worker;
}

}  // namespace
