// llava-stage: the worker executable the coordinator starts (or a cluster manager, for
// workers on other hosts).
//   llava-stage --config CONFIG --stage vision|language [--replica N] --endpoint ENDPOINT
#include <signal.h>

#include <cstdlib>
#include <iostream>
#include <string>

#include "common/errors.h"
#include "stages/worker.h"

namespace {

void on_stop_signal(int) { llava::Worker::request_stop(); }

// A replica number: a whole number in [0, 65535], the whole argument.
int parse_replica(const std::string& text) {
  const bool digits = !text.empty() && text.size() <= 5 &&
                      text.find_first_not_of("0123456789") == std::string::npos;
  if (!digits || std::stoi(text) > 65535) {
    throw llava::ConfigError("--replica " + text + ": expected a whole number from 0 to 65535");
  }
  return std::stoi(text);
}

}  // namespace

int main(int argc, char** argv) {
  // Growable segments instead of fixed blocks: loading leaves temporaries of many sizes,
  // and under a tight memory_limit fixed blocks fragment (measured: a 172 MiB request
  // refused with 757 MiB reserved but free). Read when CUDA first allocates; a user's
  // own setting wins.
  setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True", /*overwrite=*/0);
  llava::WorkerOptions options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw llava::ConfigError(arg + " needs a value");
      return argv[++i];
    };
    try {
      if (arg == "--config") {
        options.config_path = value();
      } else if (arg == "--stage") {
        options.stage = value();
      } else if (arg == "--replica") {
        options.replica = parse_replica(value());
      } else if (arg == "--endpoint") {
        options.endpoint = value();
      } else {
        throw llava::ConfigError("unknown argument '" + arg + "'");
      }
    } catch (const std::exception& e) {
      std::cerr << "llava-stage: " << e.what()
                << "\nusage: llava-stage --config CONFIG --stage vision|language [--replica N] "
                   "--endpoint ENDPOINT\n";
      return llava::kExitUsage;
    }
  }
  try {
    if (options.config_path.empty() || options.endpoint.empty()) {
      throw llava::ConfigError("--config and --endpoint are required");
    }
    // SIGTERM (a cluster manager stopping the job, or the coordinator): give the device
    // back and exit 0. A worker the coordinator started ignores SIGINT: Ctrl-C reaches the
    // whole process group, and the coordinator, draining, decides when its workers stop.
    signal(SIGTERM, on_stop_signal);
    signal(SIGINT, std::getenv("LLAVA_PIPE_WORKER_SECRET") ? SIG_IGN : on_stop_signal);
    llava::Worker worker(options);
    return worker.run();
  } catch (const llava::ConfigError& e) {
    std::cerr << "llava-stage: " << e.what() << "\n";
    return llava::kExitUsage;
  } catch (const std::exception& e) {
    std::cerr << "llava-stage: " << e.what() << "\n";
    return llava::kExitRuntime;
  }
}
