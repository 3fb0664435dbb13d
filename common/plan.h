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
  std::string decision;  // mode and release auto: what they chose and why
  std::vector<PlannedProcess> processes;
  std::vector<PlannedDevice> devices;
  std::vector<std::string> problems;  // a plan with problems is refused
};

// The CUDA context, kernel images and graph executables of one process: outside the
// caching allocator, inside the device's memory and every memory_limit. Measured on the
// H100 (LibTorch 2.11, CUDA 13): NVML peak minus the allocator's reserved peak = 686 MiB
// for a language worker without CUDA graphs, 760 MiB with them.
constexpr uint64_t kCudaRuntimeBytes = 800ull << 20;
// What the allocator holds beyond weights, KV cache and the estimated working set
// (cuBLAS workspaces per stream, CUDA graph memory pools, block rounding). Measured:
// 150-350 MiB over the estimate on the 7B and 13B shapes.
constexpr uint64_t kAllocatorSlackBytes = 384ull << 20;

// Weight-only quantization stores int4 values in groups of this many inputs, one scale each.
constexpr int64_t kInt4Group = 128;
// Bytes of one [out, in] linear weight stored as `quantize`: the values plus one scale per
// output (int8) or per output and group (int4), scales in the model dtype.
uint64_t linear_weight_bytes(int64_t out, int64_t in, Quantize quantize, uint64_t element_bytes);

// Where the language stage keeps its weights. The token embedding table stays in host
// memory when the weights are quantized or streamed (a lookup reads a few rows) unless
// it is tied to the output layer. With `offload: layers`, the first `resident_layers`
// layers stay on the device and the rest pass through two layer-sized buffers, each
// copied in just before it runs; as many stay as the memory limit allows (none without
// a limit).
struct LanguageLayout {
  uint64_t layer_bytes = 0;    // one decoder layer as stored on the device
  uint64_t head_bytes = 0;     // final norm + output layer (+ embeddings when on the device)
  uint64_t host_bytes = 0;     // weights that live in host memory
  bool embeddings_on_host = false;
  int resident_layers = 0;
  int streamed_layers = 0;
  uint64_t device_weight_bytes() const {
    return head_bytes + layer_bytes * static_cast<uint64_t>(resident_layers) +
           (streamed_layers > 0 ? 2 * layer_bytes : 0);
  }
};
LanguageLayout language_layout(const PipelineConfig& config, const LlavaConfig& model);

// Predicted memory of one stage replica (element size from the model dtype).
StageMemory predict_vision_memory(const PipelineConfig& config, const LlavaConfig& model);
StageMemory predict_language_memory(const PipelineConfig& config, const LlavaConfig& model);
// Tokens one language sequence may hold: max_context, or the model's maximum.
int64_t context_tokens(const PipelineConfig& config, const LlavaConfig& model);
// One image's embeddings: image tokens x text hidden size, in the model dtype.
uint64_t image_embedding_bytes(const PipelineConfig& config, const LlavaConfig& model);

// Resolves mode and release (release from this host's available memory) and plans them.
Plan make_plan(const PipelineConfig& config, const LlavaConfig& model);
// mode: auto -> the config to run, and in `decision` why: concurrent (sharing the device)
// when both stages with the configured batches fit in device_memory together; else
// concurrent with the language batch shrunk, no lower than min_batch; else sequential.
// Concurrent on one device splits it: each stage's memory_limit is its predicted peak plus
// half the room left. A CUDA device without a device_memory entry stays sequential (whether
// they fit is unknown); the CPU is not leased, so there the stages run together. Other
// modes are returned as they are.
PipelineConfig resolve_mode(const PipelineConfig& config, const LlavaConfig& model,
                            std::string* decision);
// release: auto -> offload where the host can keep the weights of the stages that give the
// device back (`host_available` bytes, less the coordinator's embedding memory and cache
// and kHostReserveBytes), the smaller stage first; else exit. Says why in `decision`.
// Only sequential pipelines release; other configs are returned as they are.
PipelineConfig resolve_release(const PipelineConfig& config, const LlavaConfig& model,
                               uint64_t host_available, std::string* decision);
// Host memory kept free for everything else when weights are offloaded to it.
constexpr uint64_t kHostReserveBytes = 2ull << 30;
// Host bytes a stage's offloaded weights take (what it had on its device).
uint64_t offload_bytes(const PipelineConfig& config, const LlavaConfig& model, const std::string& stage);
std::string describe(const Plan& plan, const PipelineConfig& config, const LlavaConfig& model);

}  // namespace llava
