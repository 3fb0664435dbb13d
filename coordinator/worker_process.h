// Starting and stopping local worker processes. A child gets PR_SET_PDEATHSIG, so a
// coordinator that dies (even by kill -9) takes its workers with it.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

namespace llava {

// fork + exec; throws std::runtime_error when the program cannot be started. `environment`
// ("NAME=value") is added to this process's environment for the child alone.
pid_t start_process(const std::string& program, const std::vector<std::string>& args,
                    const std::vector<std::string>& environment = {});

struct ExitStatus {
  pid_t pid;
  std::string description;  // "exited with code 1", "killed by signal 9"
  int code;                 // exit code, or 128 + signal
};
// A child that has ended, if any (non-blocking).
std::optional<ExitStatus> reap_any();
// Waits up to `timeout_ms` for `pid` to end; nothing if it is still running.
std::optional<ExitStatus> wait_exit(pid_t pid, int timeout_ms);
// Waits up to `timeout_ms` for `pid`; SIGKILL after that. Returns its status.
ExitStatus stop_process(pid_t pid, int timeout_ms);

// The directory of this executable (where llava-stage sits beside llava-pipe).
std::string executable_directory();

}  // namespace llava
