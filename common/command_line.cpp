// CLI11 with the project's errors: a flag's value is checked by the project's own code, so
// that its message names the flag, the value and what was expected.
#include "common/command_line.h"

#include <algorithm>
#include <iostream>
#include <stdexcept>

#include "common/errors.h"

namespace llava {

CLI::Option* add_checked_option(CLI::App& app, const std::string& flag,
                                const std::string& value_name, const std::string& help,
                                std::function<void(const std::string&)> apply) {
  auto checked = [flag, apply = std::move(apply)](const std::string& value) {
    try {
      apply(value);
    } catch (const std::exception& e) {
      throw ConfigError(flag + " " + value + ": " + e.what());
    }
  };
  // Given twice, the last one counts (and only it is checked), as a shell alias expects.
  return app.add_option_function<std::string>(flag, checked, help)
      ->type_name(value_name)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
}

long long whole_number(const std::string& text, long long lo, long long hi) {
  const std::string expected =
      "expected a whole number from " + std::to_string(lo) + " to " + std::to_string(hi);
  const bool digits = !text.empty() && text.size() <= 18 &&
                      text.find_first_not_of("0123456789", text[0] == '-' ? 1 : 0) ==
                          std::string::npos &&
                      text != "-";
  if (!digits) throw std::invalid_argument(expected);
  const long long value = std::stoll(text);  // 18 digits at most: no overflow
  if (value < lo || value > hi) throw std::invalid_argument(expected);
  return value;
}

std::optional<int> parse_command_line(CLI::App& app, const std::vector<std::string>& args) {
  // Arguments no flag takes are collected, to be named in the order given (CLI11's own
  // error lists them backwards).
  app.allow_extras();
  for (CLI::App* subcommand : app.get_subcommands([](CLI::App*) { return true; })) {
    subcommand->allow_extras();
  }
  std::vector<std::string> reversed(args.rbegin(), args.rend());  // CLI11 reads from the back
  try {
    app.parse(reversed);
    const std::vector<std::string> extra = app.remaining(/*recurse=*/true);
    if (extra.empty()) return std::nullopt;
    std::string listed;
    for (const auto& arg : extra) listed += (listed.empty() ? "" : " ") + arg;
    std::cerr << app.get_name() << ": unexpected argument" << (extra.size() > 1 ? "s: " : ": ")
              << listed << "\n"
              << app.help();
  } catch (const CLI::Success&) {  // --help
    std::cout << app.help();
    return 0;
  } catch (const CLI::ParseError& e) {  // the line's shape: a flag without its value...
    std::cerr << app.get_name() << ": " << e.what() << "\n" << app.help();
  } catch (const ConfigError& e) {  // a value: the message says what is wrong with it
    std::cerr << app.get_name() << ": " << e.what() << "\n";
  }
  return kExitUsage;
}

}  // namespace llava
