// The `llava-pipe` command: its subcommands (check.cpp, run.cpp, bench.cpp, serve.cpp) add
// themselves to one CLI11 command line, which parses and gives --help. Exit codes: 0 ok,
// 1 runtime failure, 2 bad config or usage, 3 (run --requests) some lines failed.
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/command_line.h"
#include "common/curve.h"
#include "common/errors.h"
#include "launch/bench.h"
#include "launch/commands.h"
#include "launch/serve.h"

namespace llava {
namespace {

Command add_keygen(CLI::App& app) {
  CLI::App* keygen = app.add_subcommand("keygen", "write a CURVE key pair for coordinator.curve");
  keygen->footer("NAME.key (public) and NAME.key_secret (both; mode 0600).");
  auto name = std::make_shared<std::string>();
  keygen->add_option("NAME", *name, "the key files' path without .key")->required();
  return [name] {
    write_curve_key(*name, generate_curve_key());
    std::cout << "wrote " << *name << ".key and " << *name << ".key_secret\n";
    return 0;
  };
}

}  // namespace
}  // namespace llava

int main(int argc, char** argv) {
  CLI::App app("llava-pipe: LLaVA-style vision-language inference as a pipeline of processes\n"
               "(a coordinator, vision workers and language workers).",
               "llava-pipe");
  app.require_subcommand(1);
  app.footer(
      "`llava-pipe COMMAND --help` lists a command's flags; sampling flags default to the\n"
      "config's generation section. Exit codes: 0 ok, 1 runtime failure, 2 bad config or\n"
      "usage, 3 (run --requests) some lines failed.");
  std::map<std::string, llava::Command> commands;  // by subcommand name
  for (auto add : {llava::add_check, llava::add_run, llava::add_bench, llava::add_serve,
                   llava::add_ask, llava::add_keygen}) {
    llava::Command command = add(app);
    commands[app.get_subcommands([](CLI::App*) { return true; }).back()->get_name()] =
        std::move(command);
  }
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    std::cout << app.help();
    return llava::kExitUsage;
  }
  if (args[0].rfind("-", 0) != 0 && commands.count(args[0]) == 0) {
    std::cerr << "llava-pipe: unknown command '" << args[0] << "'\n" << app.help();
    return llava::kExitUsage;
  }
  if (auto exit_code = llava::parse_command_line(app, args)) return *exit_code;
  try {
    return commands.at(app.get_subcommands().at(0)->get_name())();
  } catch (const llava::ConfigError& e) {
    std::cerr << "llava-pipe: " << e.what() << "\n";
    return llava::kExitUsage;
  } catch (const std::exception& e) {
    std::cerr << "llava-pipe: " << e.what() << "\n";
    return llava::kExitRuntime;
  }
}
