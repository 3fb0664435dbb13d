// llava-stage: the worker executable the coordinator starts (or a cluster manager, for
// workers on other hosts).
//   llava-stage --config CONFIG --stage vision|language [--replica N] --endpoint ENDPOINT
#include <signal.h>

#include <cstdlib>
#include <iostream>
#include <string>

#include "common/command_line.h"
#include "common/errors.h"
#include "common/stage_kind.h"
#include "stages/worker.h"

namespace {

void on_stop_signal(int) { llava::Worker::request_stop(); }

}  // namespace

int main(int argc, char** argv) {
  // Growable segments instead of fixed blocks: loading leaves temporaries of many sizes,
  // and under a tight memory_limit fixed blocks fragment (measured: a 172 MiB request
  // refused with 757 MiB reserved but free). Read when CUDA first allocates; a user's
  // own setting wins.
  setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True", /*overwrite=*/0);
  llava::WorkerOptions options;
  CLI::App app(
      "One worker of a llava-pipe pipeline: it registers with the coordinator at ENDPOINT,\n"
      "loads its stage's weights when granted the device, and answers its tasks.\n"
      "The coordinator starts its own workers; a cluster manager starts external ones.",
      "llava-stage");
  app.add_option("--config", options.config_path, "the pipeline's YAML config")
      ->type_name("CONFIG")
      ->required();
  llava::add_checked_option(app, "--stage", "vision|language", "which stage this worker runs",
                            [&](const std::string& value) {
                              const auto stage = llava::parse_stage(value);
                              if (!stage) throw llava::ConfigError("expected vision or language");
                              options.stage = *stage;
                            })
      ->required();
  llava::add_checked_option(
      app, "--replica", "N", "which replica of the stage (default 0); its device: devices[N % count]",
      [&](const std::string& value) {
        options.replica = static_cast<int>(llava::whole_number(value, 0, 65535));
      });
  app.add_option("--endpoint", options.endpoint, "the coordinator's endpoint (ipc:// or tcp://)")
      ->type_name("ENDPOINT")
      ->required();
  if (auto exit_code = llava::parse_command_line(app, {argv + 1, argv + argc})) return *exit_code;
  try {
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
