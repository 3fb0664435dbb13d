// Concurrent mode through real processes: both stages at once (also as mode: auto on the
// CPU), replicas, CURVE over tcp://, and external workers that a cluster manager starts.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <map>

#include "common/config.h"
#include "common/curve.h"
#include "coordinator/coordinator.h"
#include "coordinator/worker_process.h"
#include "pipeline_harness.h"

namespace llava::test {
namespace {

TEST(Pipeline, ConcurrentMatchesInProcessGeneration) {
  Outcome outcome = run_pipeline(write_config("concurrent", concurrent_cpu(8, 8)), kCases);
  expect_all_match(outcome);
  expect_no_deaths(outcome);
  EXPECT_GT(first_event(outcome.timeline, "vision-0", "granted"), 0);
  EXPECT_GT(first_event(outcome.timeline, "language-0", "granted"), 0);
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
      write_config("replicas",
                   "mode: concurrent\nshare_devices: true\nstages: {vision: {replicas: 2, "
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

// Over tcp:// with CURVE: the coordinator lets in the workers it starts (their key is on
// its allow-list) and the answers are the same.
TEST(Pipeline, CurveEncryptedTcpMatchesInProcessGeneration) {
  llava::write_curve_key(testing::TempDir() + "coordinator", llava::generate_curve_key());
  llava::write_curve_key(testing::TempDir() + "worker", llava::generate_curve_key());
  const std::string path = testing::TempDir() + "curve.yaml";
  std::ofstream(path)
      << "model: {checkpoint: " << kModel << ", dtype: float32}\n"
      << "mode: concurrent\nshare_devices: true\n"
      << "stages: {vision: {devices: cpu}, language: {devices: cpu, max_context: 256}}\n"
      << "coordinator:\n  endpoint: 'tcp://127.0.0.1:*'\n  heartbeat_interval: 100ms\n"
      << "  liveness: 5\n  curve: {server_key: coordinator.key_secret, worker_key: "
         "worker.key_secret}\n"
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
  ExternalWorkers workers(
      "stall",
      "stages: {vision: {devices: cpu, launch: external}, "
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

}  // namespace
}  // namespace llava::test
