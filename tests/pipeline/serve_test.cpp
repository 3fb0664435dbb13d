// The pipeline as a running service: `llava-pipe serve` (a client that leaves, CURVE
// clients), what /health reports, wake() from another thread, and `llava-pipe run` ended by
// SIGTERM or SIGKILL taking its workers with it.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/config.h"
#include "common/curve.h"
#include "common/transport.h"
#include "coordinator/coordinator.h"
#include "coordinator/worker_process.h"
#include "pipeline_harness.h"

namespace llava::test {
namespace {

// `llava-pipe serve`: a client that disconnects mid-answer has its request cancelled
// (its KV slot and queue place freed), and the next client gets its exact answer.
TEST(Pipeline, ServeCancelsTheRequestOfAClientThatDisconnects) {
  FaultDelay delay(30);  // the server's workers inherit it: answers take a while
  const std::string config = write_config("serve", concurrent_cpu(8, 1));
  const std::string listen = "ipc://@llava-serve-test-" + std::to_string(getpid());
  const std::string log = testing::TempDir() + "serve.log";
  const pid_t server =
      llava::start_process("/bin/sh", {"-c", "exec " + kBinary + "/llava-pipe serve " + config +
                                                 " --listen " + listen + " 2> " + log});
  zmq::context_t context;
  auto request = [&](zmq::socket_t& socket, const nlohmann::json& body,
                     const std::vector<std::string>& images) {
    std::vector<zmq::message_t> parts;
    parts.emplace_back(body.dump());
    for (const auto& path : images) {
      std::ifstream in(path, std::ios::binary);
      parts.emplace_back(
          std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()));
    }
    llava::send_parts(socket, std::move(parts));
  };
  {  // client A: one streamed piece of text, then gone
    auto a = llava::connect_dealer(context, listen, llava::TransportOptions{});
    request(a, {{"id", "a"}, {"prompt", "What is the capital of France?"}, {"max_new_tokens", 200}},
            {});
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
  request(b, {{"id", "b"}, {"prompt", kCases[0].prompt}, {"logprobs", 2}}, kCases[0].images);
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
  // It asked for logprobs: one per token, its id, its 2 most likely (greedy: itself first).
  ASSERT_EQ(done["logprobs"].size(), done["tokens"].size()) << done.dump();
  for (size_t i = 0; i < done["tokens"].size(); ++i) {
    const auto& token = done["logprobs"][i];
    EXPECT_EQ(token["id"], done["tokens"][i]) << i;
    ASSERT_EQ(token["top"].size(), 2u) << i;
    EXPECT_EQ(token["top"][0]["id"], token["id"]) << i;
    EXPECT_LE(token["logprob"].get<double>(), 0.0) << i;
  }
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

// What /health reports: "loading" until each stage's worker has loaded its weights, then
// ready; a killed worker makes its stage unavailable, naming it, until its replacement loads.
TEST(Pipeline, UnavailableReasonFollowsLoadingDeathAndRestart) {
  llava::Coordinator coordinator(llava::load_config(write_config("health", concurrent_cpu(2, 2))),
                                 {}, kBinary + "/llava-stage");
  EXPECT_EQ(coordinator.unavailable_reason().rfind("loading: ", 0), 0u)
      << coordinator.unavailable_reason();
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
}  // namespace llava::test
