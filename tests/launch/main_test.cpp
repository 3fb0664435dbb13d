// The llava-pipe command line (CLI11): one definition per command gives its parsing and its
// --help; a bad value is refused naming the flag and the value, a bad line with exit code 2.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace {

struct Result {
  int exit_code;
  std::string output;  // stdout and stderr
};

Result llava_pipe(const std::string& args) {
  const std::string command = std::string(LLAVA_PIPE_BINARY_DIR) + "/llava-pipe " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  std::string output;
  std::array<char, 4096> buffer;
  for (size_t n; (n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0;) output.append(buffer.data(), n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

const std::string kConfig = std::string(LLAVA_PIPE_SOURCE_DIR) + "/configs/tiny-random.yaml";

TEST(CommandLine, HelpListsEveryCommandAndEachCommandsFlags) {
  Result r = llava_pipe("--help");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  for (const char* command : {"check", "run", "bench", "serve", "ask", "keygen"}) {
    EXPECT_TRUE(contains(r.output, std::string("\n  ") + command + " ")) << command << r.output;
  }
  r = llava_pipe("run --help");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  for (const char* flag : {"--image PATH", "--prompt TEXT", "--requests IN.jsonl", "--output OUT.jsonl",
                           "--verbose", "--force", "--max-new-tokens", "--min-p", "--stop JSON"}) {
    EXPECT_TRUE(contains(r.output, flag)) << flag << "\n" << r.output;
  }
  // The sampling flags come from the one list of sampling keys: ask has them too.
  r = llava_pipe("ask --help");
  EXPECT_TRUE(contains(r.output, "--min-p")) << r.output;
  EXPECT_TRUE(contains(r.output, "--curve-server SERVER.key")) << r.output;
}

// JSON mode from the command line: the answer is a JSON object's start (the random model
// runs out of tokens inside it), and a format that is not one is refused naming the flag.
TEST(CommandLine, ResponseFormatFlagAsksForJsonMode) {
  Result r =
      llava_pipe("run " + kConfig +
                 " --prompt hi --max-new-tokens 6 --response-format '{\"type\": \"json_object\"}'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const size_t brace = r.output.find('{');
  ASSERT_NE(brace, std::string::npos) << r.output;
  ASSERT_LT(brace + 1, r.output.size()) << r.output;
  EXPECT_TRUE(r.output[brace + 1] == '"' || r.output[brace + 1] == '}')
      << r.output;  // a key, or the end
  r = llava_pipe("run " + kConfig + " --prompt hi --response-format '{\"type\": \"yaml\"}'");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "--response-format")) << r.output;
  EXPECT_TRUE(contains(r.output, "expected {\"type\": \"text\"}, {\"type\": \"json_object\"} or"))
      << r.output;
  // A schema: the answer starts with its one required key, whatever the random model prefers.
  r = llava_pipe(
      "run " + kConfig +
      " --prompt hi --max-new-tokens 12 --response-format '{\"type\": \"json_schema\", "
      "\"json_schema\": "
      "{\"schema\": {\"type\": \"object\", \"properties\": {\"n\": {\"type\": \"integer\"}}, "
      "\"required\": [\"n\"]}}}'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "{\"n\":")) << r.output;
  r = llava_pipe(
      "run " + kConfig +
      " --prompt hi --response-format '{\"type\": \"json_schema\", \"json_schema\": {\"schema\": "
      "{\"type\": \"object\", \"properties\": {\"n\": {\"type\": \"integer\", \"multipleOf\": "
      "2}}}}}'");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "'multipleOf' is not supported (at #/properties/n)")) << r.output;
}

TEST(CommandLine, ABadValueNamesTheFlagAndTheValue) {
  Result r = llava_pipe("run " + kConfig + " --prompt hi --min-p 2");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "llava-pipe: --min-p 2: min_p: 2 is out of range [0, 1]\n")) << r.output;
  r = llava_pipe("bench " + kConfig + " --image x.png --new-tokens 12abc");
  EXPECT_EQ(r.exit_code, 2) << r.output;  // was std::stoi's "12", or "stoi" and exit 1
  EXPECT_TRUE(contains(r.output, "--new-tokens 12abc: expected a whole number from 0 to ")) << r.output;
  r = llava_pipe("bench " + kConfig + " --image x.png --batches 1,0");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "--batches 1,0: batch sizes are whole numbers of at least 1, got '0'"))
      << r.output;
  r = llava_pipe("serve " + kConfig + " --listen ipc://@x --allow /nonexistent.key");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "--allow /nonexistent.key: /nonexistent.key: ")) << r.output;
}

TEST(CommandLine, ALineOfTheWrongShapeIsAUsageErrorWithTheCommandsHelp) {
  Result r = llava_pipe("check " + kConfig + " --colour red");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "llava-pipe: unexpected arguments: --colour red\n")) << r.output;
  EXPECT_TRUE(contains(r.output, "Usage: llava-pipe check [OPTIONS] CONFIG")) << r.output;
  r = llava_pipe("run");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "CONFIG is required")) << r.output;
  r = llava_pipe("run " + kConfig + " --prompt");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "--prompt")) << r.output;
  r = llava_pipe("run " + kConfig);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "give --prompt, or --requests with --output")) << r.output;
  r = llava_pipe("");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "Usage: llava-pipe [OPTIONS] SUBCOMMAND")) << r.output;
}

TEST(CommandLine, CheckTakesItsFlagBeforeOrAfterTheConfig) {
  const Result after = llava_pipe("check " + kConfig + " --workers");
  const Result before = llava_pipe("check --workers " + kConfig);
  EXPECT_EQ(after.exit_code, 0) << after.output;
  EXPECT_EQ(after.output, before.output);
  EXPECT_EQ(after.output.rfind("vision\t0\t", 0), 0u) << after.output;
}

}  // namespace
