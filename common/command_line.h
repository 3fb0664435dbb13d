// Command lines, parsed with CLI11: one definition of the flags gives both the parsing and
// --help. A bad value is a ConfigError "--flag VALUE: what was expected" (exit code 2),
// naming the flag as the YAML file's errors name their key.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace llava {

// A flag with a value that `apply` checks and stores; whatever it throws becomes a
// ConfigError "FLAG VALUE: its message". `value_name` is what --help shows (N, PATH...).
CLI::Option* add_checked_option(CLI::App& app, const std::string& flag,
                                const std::string& value_name, const std::string& help,
                                std::function<void(const std::string&)> apply);

// A whole number in [lo, hi], written out whole; throws std::invalid_argument "expected a
// whole number from LO to HI" otherwise (never std::stoi's "stoi").
long long whole_number(const std::string& text, long long lo, long long hi);

// Parses `args` (without the program's name) with `app` and its subcommands. nullopt:
// parsed, go on; else the exit code, having printed the help (0, for --help) or "NAME: the
// error" (2), followed by the help where the line's shape is wrong (a missing flag or
// value, an unexpected argument) rather than a value.
std::optional<int> parse_command_line(CLI::App& app, const std::vector<std::string>& args);

}  // namespace llava
