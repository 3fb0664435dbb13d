// `llava-pipe check CONFIG [--workers]`: validate a config and print its plan (or, with
// --workers, one line per worker process for a cluster manager's launcher).
#include <iostream>

#include "common/errors.h"
#include "common/gpu_info.h"
#include "common/model_config.h"
#include "common/plan.h"
#include "launch/commands.h"
#include "launch/server_config.h"

namespace llava {
namespace {

LlavaConfig model_of(const PipelineConfig& config) {
  try {
    return load_llava_config(config.model.checkpoint);
  } catch (const CheckpointError& e) {
    throw ConfigError(config.path + ": model.checkpoint: " + e.what());
  }
}

// The GPUs nvidia-smi shows, and what each CUDA device of the plan can run.
void describe_gpus(const PipelineConfig& config, std::ostream& out) {
  std::vector<GpuInfo> gpus;
  try {
    gpus = query_gpus();
  } catch (const std::exception& e) {
    out << "\nGPUs: nvidia-smi's answer could not be read (" << e.what() << ")\n";
    return;
  }
  if (gpus.empty()) return;
  out << "\nGPUs (nvidia-smi; the compute capability a worker there gets):\n";
  for (const auto& gpu : gpus) {
    out << "  " << describe(gpu) << "\n";
    const std::string refusal = dtype_refusal(config.model.dtype, gpu.name, gpu.major, gpu.minor);
    if (!refusal.empty()) out << "    warning: " << refusal << "\n";
  }
}

}  // namespace

int check(const std::vector<std::string>& args) {
  bool workers = false;
  std::vector<std::string> rest;
  for (const auto& arg : args) {
    if (arg == "--workers") {
      workers = true;
    } else {
      rest.push_back(arg);
    }
  }
  if (rest.size() != 1) throw ConfigError(std::string("check takes one CONFIG\n") + kUsage);
  const PipelineConfig config = load_config(rest[0]);
  const LlavaConfig model = model_of(config);
  const Plan plan = make_plan(config, model);
  if (workers) {
    // STAGE<TAB>REPLICA<TAB>DEVICE, one line per process: what a launcher starts.
    for (const PlannedProcess& process : plan.processes) {
      std::cout << process.stage << "\t" << process.replica << "\t" << process.device << "\n";
    }
    return plan.problems.empty() ? 0 : kExitUsage;
  }
  std::cout << describe(plan, config, model);
  std::cout << "\n" << describe(load_server_section(config.path));
  describe_gpus(config, std::cout);
  if (!plan.problems.empty()) return kExitUsage;
  std::cout << "\nok: the plan fits\n";
  return 0;
}

void require_fitting_plan(const PipelineConfig& config, bool force) {
  const LlavaConfig model = model_of(config);
  const Plan plan = make_plan(config, model);
  if (plan.problems.empty()) return;
  if (force) {
    std::cerr << "llava-pipe: the plan does not fit (`llava-pipe check` says why); starting anyway "
                 "(--force)\n";
    return;
  }
  std::cerr << describe(plan, config, model);
  throw ConfigError(config.path + ": the plan does not fit (above, as `llava-pipe check` prints it); "
                    "change the config, or pass --force to start anyway");
}

}  // namespace llava
