// Command lines through CLI11: a bad value is refused naming the flag, the value and what
// was expected; --help and usage errors give their exit codes.
#include "common/command_line.h"

#include <gtest/gtest.h>

#include "common/errors.h"

namespace {

using llava::parse_command_line;
using llava::whole_number;

// The message whole_number refuses `text` with, or "" if it takes it.
std::string refusal(const std::string& text) {
  try {
    whole_number(text, 0, 65535);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

TEST(CommandLine, WholeNumbersAreWholeAndInRange) {
  EXPECT_EQ(whole_number("0", 0, 65535), 0);
  EXPECT_EQ(whole_number("65535", 0, 65535), 65535);
  EXPECT_EQ(whole_number("-3", -5, 5), -3);
  for (const char* bad : {"65536", "-1", "99999999999999", "999999999999999999999", "2.5", "1e3",
                          "", "-", " 1", "1x", "+1"}) {
    EXPECT_EQ(refusal(bad), "expected a whole number from 0 to 65535") << bad;
  }
}

// An app with one checked flag, --replica N, and a required --name.
struct App {
  CLI::App app{"test", "tool"};
  int replica = 0;
  std::string name;
  App() {
    llava::add_checked_option(app, "--replica", "N", "a replica", [this](const std::string& v) {
      replica = static_cast<int>(whole_number(v, 0, 65535));
    });
    app.add_option("--name", name, "a name")->required();
  }
};

TEST(CommandLine, ACheckedFlagsErrorNamesTheFlagAndTheValue) {
  App a;
  try {
    // CLI11 reads a vector of arguments from its back.
    a.app.parse(std::vector<std::string>{"99999999999999", "--replica", "x", "--name"});
    FAIL() << "an impossible replica was taken";
  } catch (const llava::ConfigError& e) {
    EXPECT_STREQ(e.what(), "--replica 99999999999999: expected a whole number from 0 to 65535");
  }
}

TEST(CommandLine, ParsedFlagsGoOnAndUsageErrorsExitTwo) {
  App ok;
  EXPECT_EQ(parse_command_line(ok.app, {"--name", "x", "--replica", "7"}), std::nullopt);
  EXPECT_EQ(ok.replica, 7);
  EXPECT_EQ(ok.name, "x");

  testing::internal::CaptureStderr();
  App bad;
  EXPECT_EQ(parse_command_line(bad.app, {"--name", "x", "--replica", "-1"}), llava::kExitUsage);
  App missing;
  EXPECT_EQ(parse_command_line(missing.app, {"--replica", "1"}), llava::kExitUsage);
  App unknown;
  EXPECT_EQ(parse_command_line(unknown.app, {"--name", "x", "--colour", "red"}), llava::kExitUsage);
  const std::string errors = testing::internal::GetCapturedStderr();
  EXPECT_NE(errors.find("tool: --replica -1: expected a whole number from 0 to 65535"),
            std::string::npos)
      << errors;
  EXPECT_NE(errors.find("tool: --name is required"), std::string::npos) << errors;
  EXPECT_NE(errors.find("--colour"), std::string::npos) << errors;
}

TEST(CommandLine, HelpListsEveryFlagAndExitsZero) {
  App a;
  testing::internal::CaptureStdout();
  EXPECT_EQ(parse_command_line(a.app, {"--help"}), 0);
  const std::string help = testing::internal::GetCapturedStdout();
  EXPECT_NE(help.find("--replica N"), std::string::npos) << help;
  EXPECT_NE(help.find("--name"), std::string::npos) << help;
}

}  // namespace
