// The llava-pipe subcommands, one file each (check.cpp, run.cpp, bench.cpp, serve.cpp for
// serve and ask). Each adds itself to the command line, its flags giving both the parsing
// and --help, and returns what runs it once the line is parsed: the process's exit code,
// or a ConfigError for bad usage (exit 2).
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

#include "common/config.h"

namespace llava {

using Command = std::function<int()>;

Command add_check(CLI::App& app);
Command add_run(CLI::App& app);

// `run` and `serve` refuse a plan that `check` says does not fit: they print check's lines
// and throw ConfigError, unless `force`.
void require_fitting_plan(const PipelineConfig& config, bool force);

}  // namespace llava
