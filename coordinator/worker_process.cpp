// fork/exec/waitpid for local workers.
#include "coordinator/worker_process.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <thread>

namespace llava {
namespace {

ExitStatus describe(pid_t pid, int status) {
  if (WIFEXITED(status)) {
    return {pid, "exited with code " + std::to_string(WEXITSTATUS(status)), WEXITSTATUS(status)};
  }
  if (WIFSIGNALED(status)) {
    return {pid, "killed by signal " + std::to_string(WTERMSIG(status)), 128 + WTERMSIG(status)};
  }
  return {pid, "ended", -1};
}

}  // namespace

pid_t start_process(const std::string& program, const std::vector<std::string>& args,
                    const std::vector<std::string>& environment) {
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(program.c_str()));
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  // Built before the fork: between fork and exec only async-signal-safe calls may run.
  std::vector<char*> envp;
  for (const auto& e : environment) envp.push_back(const_cast<char*>(e.c_str()));
  for (char** e = environ; *e; ++e) {
    const std::string entry(*e);
    const bool replaced = std::any_of(environment.begin(), environment.end(), [&](const std::string& mine) {
      return entry.compare(0, mine.find('=') + 1, mine, 0, mine.find('=') + 1) == 0;
    });
    if (!replaced) envp.push_back(*e);
  }
  envp.push_back(nullptr);
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) throw std::runtime_error(std::string("fork failed: ") + std::strerror(errno));
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    // Ctrl-C reaches the whole process group: a worker follows its coordinator instead
    // (ignored dispositions survive exec, so there is no window before its own set-up).
    signal(SIGINT, SIG_IGN);
    if (getppid() != parent) _exit(1);  // the parent died before prctl took effect
    execve(program.c_str(), argv.data(), envp.data());
    std::fprintf(stderr, "llava-pipe: cannot start %s: %s\n", program.c_str(), std::strerror(errno));
    _exit(127);
  }
  return pid;
}

std::optional<ExitStatus> reap_any() {
  int status = 0;
  pid_t pid = waitpid(-1, &status, WNOHANG);
  if (pid <= 0) return std::nullopt;
  return describe(pid, status);
}

std::optional<ExitStatus> wait_exit(pid_t pid, int timeout_ms) {
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (true) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return describe(pid, status);
    if (r < 0) return ExitStatus{pid, "already reaped", -1};
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    // Polling a child's exit: no portable way to wait on a pid with a timeout.
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

ExitStatus stop_process(pid_t pid, int timeout_ms) {
  if (auto status = wait_exit(pid, timeout_ms)) return *status;
  int status = 0;
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return describe(pid, status);
}

std::string executable_directory() {
  char path[4096];
  ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
  if (n <= 0) return ".";
  std::string full(path, static_cast<size_t>(n));
  return full.substr(0, full.rfind('/'));
}

}  // namespace llava
