// `llava-pipe check CONFIG [--workers]`: validate a config and print its plan (or, with
// --workers, one line per worker process for a cluster manager's launcher).
#include <algorithm>
#include <iostream>
#include <memory>
#include <string>

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

// The GPUs nvidia-smi shows, with the compute capability assumed for each; true when a GPU
// the plan uses cannot run the model's dtype (the worker would refuse it at load).
bool describe_gpus(const PipelineConfig& config, const Plan& plan, std::ostream& out) {
  std::vector<GpuInfo> gpus;
  try {
    gpus = query_gpus();
  } catch (const std::exception& e) {
    out << "\nGPUs: nvidia-smi's answer could not be read (" << e.what() << ")\n";
    return false;
  }
  if (gpus.empty()) return false;
  bool problem = false;
  out << "\nGPUs (nvidia-smi; the compute capability a worker there gets):\n";
  for (const auto& gpu : gpus) {
    out << "  " << describe(gpu) << "\n";
    const std::string device = "cuda:" + std::to_string(gpu.index);
    const bool used = std::any_of(plan.processes.begin(), plan.processes.end(),
                                  [&](const PlannedProcess& p) { return p.device == device; });
    const std::string refusal = dtype_refusal(config.model.dtype, gpu.name, gpu.major, gpu.minor);
    if (used && !refusal.empty()) {
      out << "    problem: " << refusal << "\n";
      problem = true;
    }
  }
  return problem;
}

int check(const std::string& config_path, bool workers) {
  const PipelineConfig config = load_config(config_path);
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
  const bool gpu_problem = describe_gpus(config, plan, std::cout);
  if (!plan.problems.empty() || gpu_problem) return kExitUsage;
  std::cout << "\nok: the plan fits\n";
  return 0;
}

}  // namespace

Command add_check(CLI::App& app) {
  CLI::App* command = app.add_subcommand("check", "validate CONFIG and print its plan");
  command->footer(
      "The plan: processes, devices, when each holds its device, predicted peak memory, and\n"
      "the GPUs nvidia-smi shows. Exit code 2 if the config is bad or cannot fit.");
  struct Options {
    std::string config_path;
    bool workers = false;
  };
  auto o = std::make_shared<Options>();
  command->add_option("CONFIG", o->config_path, "the pipeline's YAML config")->required();
  command->add_flag("--workers", o->workers,
                  "one line per worker instead, STAGE<TAB>REPLICA<TAB>DEVICE: what a launcher "
                  "starts");
  return [o] { return check(o->config_path, o->workers); };
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
