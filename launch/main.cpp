// The `llava-pipe` command: check a config and print its plan; run, serve and bench
// a pipeline. Exit codes: 0 ok, 1 runtime failure, 2 bad config or usage.
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/errors.h"
#include "common/model_config.h"
#include "common/plan.h"

namespace {

const char* kUsage =
    "usage: llava-pipe check CONFIG\n"
    "  check   validate CONFIG and print the plan: processes, devices, when each holds its\n"
    "          device, predicted peak memory; exits 2 if the config is bad or cannot fit\n";

int check(const std::vector<std::string>& args) {
  if (args.size() != 1) throw llava::ConfigError(std::string("check takes one CONFIG\n") + kUsage);
  llava::PipelineConfig config = llava::load_config(args[0]);
  llava::LlavaConfig model;
  try {
    model = llava::load_llava_config(config.model.checkpoint);
  } catch (const llava::CheckpointError& e) {
    throw llava::ConfigError(config.path + ": model.checkpoint: " + e.what());
  }
  llava::Plan plan = llava::make_plan(config, model);
  std::cout << llava::describe(plan, config, model);
  if (!plan.problems.empty()) return llava::kExitUsage;
  std::cout << "\nok: the plan fits\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    std::cout << kUsage;
    return args.empty() ? llava::kExitUsage : 0;
  }
  const std::string command = args[0];
  args.erase(args.begin());
  try {
    if (command == "check") return check(args);
    std::cerr << "llava-pipe: unknown command '" << command << "'\n" << kUsage;
    return llava::kExitUsage;
  } catch (const llava::ConfigError& e) {
    std::cerr << "llava-pipe: " << e.what() << "\n";
    return llava::kExitUsage;
  } catch (const std::exception& e) {
    std::cerr << "llava-pipe: " << e.what() << "\n";
    return llava::kExitRuntime;
  }
}
