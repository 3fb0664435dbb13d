// The resolved plan of a pipeline: which processes run, on which devices, when each holds
// its device, and the predicted peak device memory. `llava-pipe check` prints it; the
// coordinator launches from it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/model_config.h"

namespace llava {

struct StageMemory {
  uint64_t weights = 0;
  uint64_t kv_cache = 0;     // language only
  uint64_t activations = 0;  // the largest working set of one batch
  uint64_t runtime = 0;      // CUDA context and allocator slack (0 on the CPU)
  uint64_t total() const { return weights + kv_cache + activations + runtime; }
};

struct PlannedProcess {
  std::string name;  // "vision-0", "language-1"
  std::string stage;
  int replica = 0;
  std::string device;
  std::string holds;  // when it holds the device
  StageMemory memory;
  uint64_t memory_limit = 0;
};

struct PlannedDevice {
  std::string device;
  std::vector<std::string> processes;
  uint64_t predicted_peak = 0;
  uint64_t capacity = 0;  // from device_memory; 0 = unknown
};

struct Plan {
  Mode mode = Mode::kSequential;
  std::vector<PlannedProcess> processes;
  std::vector<PlannedDevice> devices;
  std::vector<std::string> problems;  // a plan with problems is refused
};

// Predicted memory of one stage replica (element size from the model dtype).
StageMemory predict_vision_memory(const PipelineConfig& config, const LlavaConfig& model);
StageMemory predict_language_memory(const PipelineConfig& config, const LlavaConfig& model);
// Tokens one language sequence may hold: max_context, or the model's maximum.
int64_t context_tokens(const PipelineConfig& config, const LlavaConfig& model);

Plan make_plan(const PipelineConfig& config, const LlavaConfig& model);
std::string describe(const Plan& plan, const PipelineConfig& config, const LlavaConfig& model);

}  // namespace llava
