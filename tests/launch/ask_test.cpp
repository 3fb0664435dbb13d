// `llava-pipe ask` fails fast, with the reason, where no answer can come (nobody listening,
// a request the server drops for its size), and names the flag of a bad sampling value;
// `serve` answers a request whose frames together are over max_message_size. No pipeline:
// the servers here never start a worker.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <zmq.hpp>

namespace {

struct Result {
  int exit_code;
  std::string output;
  double seconds;
};

Result run(const std::string& args) {
  const auto start = std::chrono::steady_clock::now();
  FILE* pipe =
      popen((std::string(LLAVA_PIPE_BINARY_DIR) + "/llava-pipe " + args + " 2>&1").c_str(), "r");
  std::string out;
  char buffer[4096];
  while (pipe && std::fgets(buffer, sizeof buffer, pipe)) out += buffer;
  const int status = pipe ? pclose(pipe) : -1;
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out,
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()};
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::string file_of(size_t bytes, const std::string& name) {
  const std::string path = testing::TempDir() + name;
  std::ofstream(path, std::ios::binary) << std::string(bytes, 'x');
  return path;
}

TEST(Ask, NobodyListeningFailsAtOnceSayingSo) {
  const Result r = run("ask tcp://127.0.0.1:1 --prompt hi");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(contains(r.output, "nobody listens at tcp://127.0.0.1:1")) << r.output;
  EXPECT_LT(r.seconds, 10);
}

TEST(Ask, NobodyListeningOnAnIpcEndpointFailsAtOnceToo) {
  const std::string endpoint = "ipc://@llava-ask-test-nobody-" + std::to_string(getpid());
  const Result r = run("ask " + endpoint + " --prompt hi");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(contains(r.output, "nobody listens at " + endpoint)) << r.output;
  EXPECT_LT(r.seconds, 10);
}

TEST(Ask, ARequestTheServerDropsForItsSizeFailsAtOnceWithTheReason) {
  // A ZeroMQ server with a 4 KiB cap: it hangs up on a larger frame, as serve does past
  // coordinator.max_message_size.
  zmq::context_t context;
  zmq::socket_t router(context, zmq::socket_type::router);
  router.set(zmq::sockopt::maxmsgsize, int64_t{4096});
  const std::string endpoint = "ipc://@llava-ask-test-small-" + std::to_string(getpid());
  router.bind(endpoint);
  const Result r = run("ask " + endpoint + " --prompt hi --image " + file_of(20000, "ask-big.png"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(contains(r.output, "closed the connection")) << r.output;
  EXPECT_TRUE(contains(r.output, "max_message_size")) << r.output;
  EXPECT_LT(r.seconds, 10);
}

TEST(Ask, ABadSamplingValueNamesTheFlag) {
  Result r = run("ask tcp://127.0.0.1:1 --prompt hi --temperature abc");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "--temperature abc: expected a number")) << r.output;
  r = run("ask tcp://127.0.0.1:1 --prompt hi --top-p 2");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "--top-p 2: top_p: 2 is out of range (0, 1]")) << r.output;
  r = run("ask tcp://127.0.0.1:1 --prompt hi --colour red");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "--colour red")) << r.output;
}

TEST(Ask, ADirectoryAsImageIsRefusedByName) {
  const Result r = run("ask tcp://127.0.0.1:1 --prompt hi --image " + testing::TempDir());
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "not a readable file")) << r.output;
}

TEST(Serve, ARequestWhoseFramesTogetherAreOverMaxMessageSizeIsAnsweredWithAnError) {
  // Each image fits the 1 MiB cap, the two together do not: serve answers (no worker starts).
  const std::string config = testing::TempDir() + "serve-small.yaml";
  {
    std::ifstream demo(LLAVA_PIPE_SOURCE_DIR "/configs/tiny-random.yaml");
    std::ofstream out(config);
    std::string line;
    while (std::getline(demo, line)) {
      if (line.rfind("  checkpoint:", 0) == 0)
        line = "  checkpoint: " LLAVA_PIPE_SOURCE_DIR "/tests/data/tiny-llava";
      out << line << "\n";
      if (line == "coordinator:") out << "  max_message_size: 1MiB\n";
    }
  }
  const std::string endpoint = "ipc://@llava-serve-test-" + std::to_string(getpid());
  // The shell prints its pid, then becomes the server: that pid is the one to stop.
  FILE* server = popen(("echo $$; exec " + std::string(LLAVA_PIPE_BINARY_DIR) +
                        "/llava-pipe serve " + config + " --listen " + endpoint + " 2>&1")
                           .c_str(),
                       "r");
  ASSERT_TRUE(server);
  char line[4096];
  ASSERT_TRUE(std::fgets(line, sizeof line, server));
  const pid_t pid = static_cast<pid_t>(std::stol(line));
  std::string said;
  while (std::fgets(line, sizeof line, server) && !contains(said += line, "serving")) {
  }
  ASSERT_TRUE(contains(said, "serving " + config + " on")) << said;
  const std::string a = file_of(700000, "part-a.png"), b = file_of(700000, "part-b.png");
  const Result r = run("ask " + endpoint + " --prompt hi --image " + a + " --image " + b);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(
      contains(r.output, "this server takes at most 1.0 MiB (coordinator.max_message_size)"))
      << r.output;
  EXPECT_LT(r.seconds, 10);
  kill(pid, SIGTERM);
  while (std::fgets(line, sizeof line, server)) {
  }
  pclose(server);
}

}  // namespace
