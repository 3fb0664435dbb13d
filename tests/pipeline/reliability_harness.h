// What the reliability suites share: a config over the tiny model on the CPU, temp paths,
// and `llava-pipe` run as a user runs it (exit code and output).
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "in_process.h"

namespace llava::test::reliability {

inline std::string temp_path(const std::string& name) {
  return testing::TempDir() + "reliability-" + std::to_string(getpid()) + "-" + name;
}

// A config over the tiny model on the CPU; `body` gives mode and stages, `coordinator` more
// coordinator keys.
inline std::string write_config(const std::string& name, const std::string& body, const std::string& coordinator = "",
                         int max_new_tokens = 4) {
  const std::string path = temp_path(name + ".yaml");
  std::ofstream(path) << "model: {checkpoint: " << kModel << ", dtype: float32}\n"
                      << body << "coordinator: {heartbeat_interval: 100ms, liveness: 5"
                      << (coordinator.empty() ? "" : ", " + coordinator) << "}\n"
                      << "generation: {max_new_tokens: " << max_new_tokens << "}\n";
  return path;
}

inline const std::string kSequential =
    "mode: sequential\nstages: {vision: {devices: cpu, batch_size: 8}, "
    "language: {devices: cpu, batch_size: 8, max_context: 256}}\n";
inline const std::string kConcurrent =
    "mode: concurrent\nshare_devices: true\nstages: {vision: {devices: cpu, batch_size: 8}, "
    "language: {devices: cpu, batch_size: 8, max_context: 256}}\n";

struct Command {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

inline Command run_llava_pipe(const std::string& args, const std::string& environment = "") {
  Command c;
  c.output = llava::test::run_command(environment + " " + kBinary + "/llava-pipe " + args + " 2>&1; echo \"exit=$?\"");
  const auto at = c.output.rfind("exit=");
  if (at != std::string::npos) {
    c.exit_code = std::atoi(c.output.c_str() + at + 5);
    c.output.resize(at);
  }
  return c;
}

}  // namespace llava::test::reliability
