// Hostile use of a running pipeline: an image that cannot be resized, a restart budget
// spent, a local process posing as a worker, a clash of endpoints, a resumed request whose
// answer holds the image token, floods of garbage. Each test ends with every request
// answered exactly once. (Batch files past every limit: batch_reliability_test.cpp.)
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

// Runs a coordinator in this process over `specs`, calling `during` after each step until
// every request is answered (or 120 s pass). Returns the results by request id.
struct Outcome {
  std::map<uint64_t, llava::RequestResult> results;
  std::map<uint64_t, int> answers;
  std::vector<llava::StageReport> reports;
  std::vector<uint64_t> ids;
};

Outcome run_coordinator(const std::string& config, const std::vector<llava::RequestSpec>& specs,
                    const std::function<void(llava::Coordinator&)>& during = {}) {
  Outcome run;
  llava::CoordinatorEvents events;
  events.on_result = [&](const llava::RequestResult& r) {
    run.results[r.id] = r;
    ++run.answers[r.id];
  };
  llava::Coordinator coordinator(llava::load_config(config), events, kBinary + "/llava-stage");
  for (const auto& spec : specs) run.ids.push_back(coordinator.submit(spec));
  const auto deadline = Clock::now() + std::chrono::seconds(120);
  while (!coordinator.idle() && Clock::now() < deadline && coordinator.step(std::chrono::milliseconds(20))) {
    if (during) during(coordinator);
  }
  coordinator.shutdown_workers();
  run.reports = coordinator.reports();
  return run;
}

llava::RequestSpec spec_of(const std::string& prompt, const std::vector<std::string>& images, int max_new_tokens = 4) {
  llava::RequestSpec spec;
  spec.prompt = prompt;
  spec.image_paths = images;
  spec.generation.max_new_tokens = max_new_tokens;
  return spec;
}

void expect_each_answered_once(const Outcome& run) {
  for (uint64_t id : run.ids) {
    ASSERT_EQ(run.answers.count(id), 1u) << "request " << id << " got no answer";
    EXPECT_EQ(run.answers.at(id), 1) << "request " << id;
  }
}

int restarts_of(const Outcome& run, const std::string& process) {
  for (const auto& r : run.reports) {
    if (r.process == process) return r.restarts;
  }
  return -1;
}

// A 1 x 100,000 PNG is 475 bytes; resized for CLIP it would be 336 x 33,600,000. It fails
// alone, at once, with the reason; the requests beside it are answered and no worker dies.
TEST(Reliability, AnImageOfExtremeAspectRatioFailsAloneAndTheStageLives) {
  const std::string strip = temp_path("strip.png");
  const auto png = llava::test::black_png(1, 100'000);
  std::ofstream(strip, std::ios::binary).write(reinterpret_cast<const char*>(png.data()), static_cast<long>(png.size()));
  const std::string config = write_config("strip", kConcurrent);
  std::vector<llava::RequestSpec> specs;
  for (int i = 0; i < 6; ++i) specs.push_back(spec_of("Describe " + std::to_string(i), {kImages + "img01_320x240_RGB.jpg"}));
  specs.insert(specs.begin() + 3, spec_of("The strip", {strip}));
  specs.push_back(spec_of("The strip again", {strip}));
  Outcome run = run_coordinator(config, specs);
  expect_each_answered_once(run);
  for (size_t i = 0; i < run.ids.size(); ++i) {
    const auto& r = run.results.at(run.ids[i]);
    if (i == 3 || i == run.ids.size() - 1) {
      EXPECT_FALSE(r.ok);
      EXPECT_NE(r.error.find("aspect ratio 100000:1"), std::string::npos) << r.error;
      EXPECT_EQ(r.attempts, 1) << "a bad image is not retried";
    } else {
      EXPECT_TRUE(r.ok) << i << ": " << r.error;
    }
  }
  EXPECT_EQ(restarts_of(run, "vision-0"), 0);
}

// The restart budget is a sliding window: a stage over it fails its requests for a while,
// then recovers as the deaths age out.
TEST(Reliability, TheRestartBudgetRecoversAfterItsWindow) {
  const std::string config = write_config("budget", kConcurrent, "max_restarts_per_minute: 0, restart_window: 1500ms");
  llava::CoordinatorEvents events;
  std::map<uint64_t, llava::RequestResult> results;
  events.on_result = [&](const llava::RequestResult& r) { results[r.id] = r; };
  llava::Coordinator coordinator(llava::load_config(config), events, kBinary + "/llava-stage");
  auto finish = [&](uint64_t id) {
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    while (!results.count(id) && Clock::now() < deadline) coordinator.step(std::chrono::milliseconds(20));
    return results.count(id) ? results.at(id) : llava::RequestResult{};
  };
  const auto first = finish(coordinator.submit(spec_of("First", {})));
  ASSERT_TRUE(first.ok) << first.error;
  // The language worker dies: one death is over a budget of none.
  const pid_t language = coordinator.pid_of("language-0");
  ASSERT_GT(language, 0);
  kill(language, SIGKILL);
  const auto killed_at = Clock::now();
  while (coordinator.pid_of("language-0") == language && Clock::now() - killed_at < std::chrono::seconds(10)) {
    coordinator.step(std::chrono::milliseconds(20));
  }
  const auto refused = finish(coordinator.submit(spec_of("While over budget", {})));
  EXPECT_FALSE(refused.ok);
  EXPECT_NE(refused.error.find("language-0 failed 1 times in 1.5 s"), std::string::npos) << refused.error;
  // The window passes (the loop keeps serving meanwhile): the stage works again.
  while (Clock::now() - killed_at < std::chrono::milliseconds(1600)) coordinator.step(std::chrono::milliseconds(20));
  const auto recovered = finish(coordinator.submit(spec_of("After the window", {})));
  EXPECT_TRUE(recovered.ok) << recovered.error;
}

// A local process that knows the language worker's pid (ps shows it) says hello as that
// worker. It is refused, gets no task, and every request is answered by the real worker.
TEST(Reliability, AFakeWorkerCannotTakeOverALocalPipeline) {
  ScopedEnv slow("LLAVA_PIPE_FAULT_WORK_DELAY_MS", "30");
  const std::string config = write_config("hijack", kConcurrent);
  std::vector<llava::RequestSpec> specs;
  for (int i = 0; i < 12; ++i) specs.push_back(spec_of("Question " + std::to_string(i), {}, 6));
  zmq::context_t context;
  std::optional<zmq::socket_t> fake;
  std::vector<std::string> fake_got;
  Outcome run = run_coordinator(config, specs, [&](llava::Coordinator& c) {
    const pid_t real = c.pid_of("language-0");
    if (!fake && real > 0) {
      fake = llava::connect_dealer(context, c.endpoint(), {});
      llava::wire::Outgoing hello;
      auto body = hello.header().getBody().initHello();
      body.setStage(llava::schema::Stage::LANGUAGE);
      body.setPid(static_cast<uint32_t>(real));
      body.setReplica(0);
      body.setDevice("cpu");
      llava::send_message(*fake, hello);
    }
    while (fake) {
      auto parts = llava::receive_parts(*fake, std::chrono::milliseconds(0));
      if (!parts) break;
      auto message = llava::wire::Incoming::parse(std::move(*parts), false, {});
      fake_got.push_back(llava::wire::kind_name(message.kind()));
    }
  });
  expect_each_answered_once(run);
  for (uint64_t id : run.ids) EXPECT_TRUE(run.results.at(id).ok) << run.results.at(id).error;
  ASSERT_FALSE(fake_got.empty()) << "the fake worker heard nothing (not even a refusal)";
  for (const auto& kind : fake_got) EXPECT_EQ(kind, "refused");
  EXPECT_EQ(restarts_of(run, "language-0"), 0);
}

TEST(Reliability, ASecondPipelineOnTheSameIpcFileIsRefusedNamingIt) {
  const std::string folder = temp_path("clash");
  std::filesystem::create_directories(folder);
  const std::string endpoint = "ipc://" + folder + "/coordinator";
  const std::string config = write_config("clash", kConcurrent, "endpoint: '" + endpoint + "'");
  llava::Coordinator first(llava::load_config(config), {}, kBinary + "/llava-stage");
  try {
    llava::Coordinator second(llava::load_config(config), {}, kBinary + "/llava-stage");
    FAIL() << "a second coordinator took " << endpoint << " over";
  } catch (const llava::TransportError& e) {
    EXPECT_NE(std::string(e.what()).find(endpoint), std::string::npos) << e.what();
  }
}

// By default a local pipeline listens on a socket file in a folder only this user may enter.
TEST(Reliability, TheDefaultEndpointIsAPrivateSocketFile) {
  const std::string config = write_config("private", kConcurrent);
  std::string folder;
  {
    llava::Coordinator coordinator(llava::load_config(config), {}, kBinary + "/llava-stage");
    const std::string endpoint = coordinator.endpoint();
    ASSERT_EQ(endpoint.rfind("ipc:///", 0), 0u) << endpoint;
    folder = std::filesystem::path(endpoint.substr(6)).parent_path();
    const auto permissions = std::filesystem::status(folder).permissions();
    EXPECT_EQ(permissions & std::filesystem::perms::all, std::filesystem::perms::owner_all) << folder;
  }
  EXPECT_FALSE(std::filesystem::exists(folder)) << "the private folder outlived its coordinator";
}

// The language worker reports the image token as its second token and then dies: the
// resumed request continues from that text token, not as a 17th image placeholder.
TEST(Reliability, AResumedRequestWhoseAnswerHoldsTheImageTokenCompletes) {
  const std::string once = temp_path("once");
  std::ofstream(once) << "armed";
  ScopedEnv fire_once("LLAVA_PIPE_FAULT_ONCE", once);
  ScopedEnv force("LLAVA_PIPE_FAULT_FORCE_TOKEN", "800:1");  // tiny-llava's image token
  ScopedEnv die("LLAVA_PIPE_FAULT_STICKY_AFTER_STEPS", "3");
  // 20 ms before each step: the forced token's chunk reaches the coordinator long before
  // the worker's exit does. Without it, the worker's _Exit a millisecond after sending
  // could beat the chunk (the coordinator then resumed from the first token, rightly, and
  // the forced token was never part of the answer: 1 run in 5 on a busy machine).
  ScopedEnv slow("LLAVA_PIPE_FAULT_WORK_DELAY_MS", "20");
  const std::string config = write_config("resume", kConcurrent, "", 8);
  Outcome run = run_coordinator(config, {spec_of("Describe it", {kImages + "img01_320x240_RGB.jpg"}, 8)});
  expect_each_answered_once(run);
  const auto& r = run.results.at(run.ids[0]);
  ASSERT_TRUE(r.ok) << r.error;
  ASSERT_EQ(r.tokens.size(), 8u);
  EXPECT_EQ(r.tokens[1], 800);
  EXPECT_EQ(r.attempts, 2);
  EXPECT_EQ(restarts_of(run, "language-0"), 1);
}

TEST(Reliability, BadPromptsAndImagePathsFailAloneWithTheirReason) {
  const std::string config = write_config("bad-input", kConcurrent);
  Outcome run = run_coordinator(config, {spec_of("fine", {}), spec_of("bad \xC3\x28 byte", {}),
                                     spec_of("a folder", {kImages}), spec_of("fine again", {})});
  expect_each_answered_once(run);
  EXPECT_TRUE(run.results.at(run.ids[0]).ok);
  EXPECT_NE(run.results.at(run.ids[1]).error.find("the prompt is not valid UTF-8 (at byte 4)"), std::string::npos)
      << run.results.at(run.ids[1]).error;
  EXPECT_NE(run.results.at(run.ids[2]).error.find("is a directory"), std::string::npos)
      << run.results.at(run.ids[2]).error;
  EXPECT_TRUE(run.results.at(run.ids[3]).ok);
}

// Ctrl-C reaches the whole process group; the workers the coordinator started ignore it
// (the coordinator drains and decides), so no weights are reloaded.
TEST(Reliability, WorkersIgnoreSigintToTheProcessGroup) {
  ScopedEnv slow("LLAVA_PIPE_FAULT_WORK_DELAY_MS", "20");
  const std::string config = write_config("sigint", kConcurrent);
  std::vector<llava::RequestSpec> specs;
  for (int i = 0; i < 6; ++i) specs.push_back(spec_of("Question " + std::to_string(i), {kImages + "img01_320x240_RGB.jpg"}));
  std::set<pid_t> interrupted;
  Outcome run = run_coordinator(config, specs, [&](llava::Coordinator& c) {
    for (const char* process : {"vision-0", "language-0"}) {
      const pid_t pid = c.pid_of(process);
      if (pid > 0 && interrupted.insert(pid).second) kill(pid, SIGINT);
    }
  });
  expect_each_answered_once(run);
  for (uint64_t id : run.ids) EXPECT_TRUE(run.results.at(id).ok) << run.results.at(id).error;
  EXPECT_EQ(interrupted.size(), 2u);
  EXPECT_EQ(restarts_of(run, "vision-0"), 0);
  EXPECT_EQ(restarts_of(run, "language-0"), 0);
}

// Work steps longer than the liveness period (0.5 s here: a long prefill, a big image batch
// on the CPU): the workers' pulse keeps their heartbeats flowing, so none is taken for dead.
TEST(Reliability, SlowWorkStepsDoNotLookLikeADeadWorker) {
  ScopedEnv slow("LLAVA_PIPE_FAULT_WORK_DELAY_MS", "800");
  const std::string config = write_config("slow-steps", kConcurrent, "", 3);
  Outcome run = run_coordinator(config, {spec_of("One", {kImages + "img01_320x240_RGB.jpg"}, 3),
                                         spec_of("Two", {}, 3)});
  expect_each_answered_once(run);
  for (uint64_t id : run.ids) EXPECT_TRUE(run.results.at(id).ok) << run.results.at(id).error;
  EXPECT_EQ(restarts_of(run, "vision-0"), 0);
  EXPECT_EQ(restarts_of(run, "language-0"), 0);
}

// 2,000 garbage messages from a local process: logged a line a second at most, each line
// counting the rest; the pipeline answers as before.
TEST(Reliability, AFloodOfMalformedMessagesIsLoggedAtALimitedRate) {
  const std::string config = write_config("flood", kConcurrent);
  zmq::context_t context;
  bool flooded = false;
  testing::internal::CaptureStderr();
  Outcome run = run_coordinator(config, {spec_of("Before", {}), spec_of("During", {})}, [&](llava::Coordinator& c) {
    if (flooded) return;
    flooded = true;
    auto garbage = llava::connect_dealer(context, c.endpoint(), {});
    for (int i = 0; i < 2000; ++i) {
      std::vector<zmq::message_t> parts;
      parts.emplace_back("not a capnp header", 18);
      llava::send_parts(garbage, std::move(parts));
    }
    for (int i = 0; i < 50; ++i) c.step(std::chrono::milliseconds(10));
  });
  const std::string log = testing::internal::GetCapturedStderr();
  expect_each_answered_once(run);
  size_t lines = 0;
  for (size_t at = log.find("dropped a malformed message"); at != std::string::npos;
       at = log.find("dropped a malformed message", at + 1)) {
    ++lines;
  }
  EXPECT_GE(lines, 1u) << log;
  EXPECT_LE(lines, 3u) << log;
}

// A stage that runs out of memory while loading: the run ends with one line naming the
// stage, the device, the allocation, the memory_limit and the knobs (no LibTorch backtrace).
TEST(Reliability, OutOfMemoryAtLoadIsOneLineWithTheKnobs) {
  const std::string config = write_config("oom-load", kConcurrent);
  Command c = run_llava_pipe("run " + config + " --prompt hello", "LLAVA_PIPE_FAULT_OOM_AT_LOAD=1");
  EXPECT_EQ(c.exit_code, llava::kExitRuntime) << c.output;
  std::smatch line;
  ASSERT_TRUE(std::regex_search(c.output, line, std::regex("llava-pipe: [^\n]*out of memory[^\n]*")))
      << c.output;
  EXPECT_NE(line.str().find("on cpu: out of memory while loading (Tried to allocate 86.00 MiB); memory_limit none"),
            std::string::npos)
      << line.str();
  EXPECT_NE(line.str().find("batch_size"), std::string::npos) << line.str();
  EXPECT_EQ(c.output.find("frame #"), std::string::npos) << "a backtrace reached the user: " << c.output;
}

// A cluster manager's replica whose worker is alive: a second process saying hello for it
// (another job step, a restarted step before the old one is declared dead) is refused and
// told why; the first keeps the replica.
TEST(Reliability, ASecondLiveWorkerForOneExternalReplicaIsRefused) {
  const std::string endpoint = "ipc://@llava-fence-" + std::to_string(getpid());
  const std::string config = write_config("fence",
                                          "mode: concurrent\nshare_devices: true\nstages: {vision: {devices: cpu, "
                                          "launch: external}, language: {devices: cpu, max_context: 256, launch: external}}\n",
                                          "endpoint: '" + endpoint + "'");
  llava::Coordinator coordinator(llava::load_config(config), {}, kBinary + "/llava-stage");
  zmq::context_t context;
  auto hello = [&](zmq::socket_t& socket, uint64_t incarnation) {
    llava::wire::Outgoing message;
    auto body = message.header().getBody().initHello();
    body.setStage(llava::schema::Stage::LANGUAGE);
    body.setReplica(0);
    body.setDevice("cpu");
    body.setIncarnation(incarnation);
    llava::send_message(socket, message);
  };
  // Reads until a message of `kind` arrives (the coordinator's heartbeats come too).
  auto wait_for = [&](zmq::socket_t& socket, const std::string& kind) -> std::string {
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (Clock::now() < deadline) {
      coordinator.step(std::chrono::milliseconds(10));
      auto parts = llava::receive_parts(socket, std::chrono::milliseconds(10));
      if (!parts) continue;
      auto message = llava::wire::Incoming::parse(std::move(*parts), false, {});
      if (llava::wire::kind_name(message.kind()) != kind) continue;
      return kind == "refused" ? std::string(message.header().getBody().getRefused().getReason()) : kind;
    }
    return "";
  };
  auto first = llava::connect_dealer(context, endpoint, {});
  hello(first, 1);
  EXPECT_EQ(wait_for(first, "heartbeat"), "heartbeat");  // registered: the coordinator beats to it
  auto second = llava::connect_dealer(context, endpoint, {});
  hello(second, 2);
  const std::string why = wait_for(second, "refused");
  EXPECT_NE(why.find("language-0 is registered to a live worker"), std::string::npos) << why;
  EXPECT_EQ(wait_for(first, "heartbeat"), "heartbeat");  // the first still holds it
}

// A worker started with a coordinator host that does not resolve says so at once (ZeroMQ
// would retry the name quietly forever) and exits 1.
TEST(Reliability, AWorkerWhoseCoordinatorHostDoesNotResolveSaysSo) {
  const std::string config = write_config("no-host", kConcurrent);
  const std::string output = llava::test::run_command(
      kBinary + "/llava-stage --config " + config +
      " --stage language --endpoint tcp://no-such-host.invalid:5555 2>&1; echo rc=$?");
  EXPECT_NE(output.find("the host 'no-such-host.invalid' does not resolve"), std::string::npos) << output;
  EXPECT_NE(output.find("rc=1"), std::string::npos) << output;
}

TEST(Reliability, AWorkerGivenAnImpossibleReplicaNamesTheFlag) {
  const std::string output = llava::test::run_command(kBinary + "/llava-stage --config x.yaml --stage vision "
                                                      "--replica 99999999999999 --endpoint ipc://@x 2>&1");
  EXPECT_NE(output.find("--replica 99999999999999: expected a whole number from 0 to 65535"), std::string::npos)
      << output;
}

TEST(Reliability, AWorkersFlagErrorsNameTheFlagAndItsHelpListsEveryFlag) {
  const std::string stage = llava::test::run_command(
      kBinary + "/llava-stage --config x.yaml --stage audio --endpoint ipc://@x 2>&1; echo rc=$?");
  EXPECT_NE(stage.find("llava-stage: --stage audio: expected vision or language"), std::string::npos)
      << stage;
  EXPECT_NE(stage.find("rc=2"), std::string::npos) << stage;
  const std::string missing = llava::test::run_command(kBinary + "/llava-stage --stage vision 2>&1; echo rc=$?");
  EXPECT_NE(missing.find("--config is required"), std::string::npos) << missing;
  EXPECT_NE(missing.find("rc=2"), std::string::npos) << missing;
  const std::string help = llava::test::run_command(kBinary + "/llava-stage --help; echo rc=$?");
  for (const char* flag : {"--config CONFIG", "--stage vision|language", "--replica N", "--endpoint ENDPOINT"}) {
    EXPECT_NE(help.find(flag), std::string::npos) << flag << " in\n" << help;
  }
  EXPECT_NE(help.find("rc=0"), std::string::npos) << help;
}

}  // namespace
