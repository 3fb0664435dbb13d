// The llava-pipe subcommands, one file each (check.cpp, run.cpp, serve.cpp, bench.cpp);
// main.cpp dispatches. Each returns the process's exit code and throws ConfigError for bad
// usage (exit 2).
#pragma once

#include <string>
#include <vector>

#include "common/config.h"

namespace llava {

extern const char* const kUsage;

int check(const std::vector<std::string>& args);
int run(const std::vector<std::string>& args);

// `run` and `serve` refuse a plan that `check` says does not fit: they print check's lines
// and throw ConfigError, unless `force`.
void require_fitting_plan(const PipelineConfig& config, bool force);

}  // namespace llava
