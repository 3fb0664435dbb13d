// Placement and memory prediction. The estimates count weights exactly and bound the
// working set of one batch; the workers report what they really used.
#include "common/plan.h"

#include <algorithm>
#include <map>
#include <sstream>

#include "common/units.h"

namespace llava {
namespace {

constexpr uint64_t kCudaRuntimeBytes = 600ull << 20;  // context + cuBLAS workspace, measured
constexpr int64_t kPrefillChunk = 512;                // tokens per prefill step

bool on_gpu(const std::string& device) { return device != "cpu"; }

}  // namespace

int64_t context_tokens(const PipelineConfig& config, const LlavaConfig& model) {
  return config.language.max_context > 0 ? config.language.max_context
                                          : model.text.max_position_embeddings;
}

StageMemory predict_vision_memory(const PipelineConfig& config, const LlavaConfig& model) {
  const uint64_t bytes = element_size(config.model.dtype);
  const auto& v = model.vision;
  const uint64_t batch = static_cast<uint64_t>(config.vision.batch_size);
  const uint64_t tokens = static_cast<uint64_t>(v.num_positions());
  StageMemory m;
  m.weights = static_cast<uint64_t>(model.vision_parameters() + model.projector_parameters()) *
              bytes;
  // Per image: the residual stream and a few of its copies, the MLP's hidden layer, one
  // layer's attention scores, the float32 pixels, and the projected output.
  uint64_t per_image = tokens * (6 * v.hidden_size + 2 * v.intermediate_size) * bytes +
                       v.num_attention_heads * tokens * tokens * bytes +
                       3 * v.image_size * v.image_size * 4 +
                       model.image_tokens() * model.text.hidden_size * bytes * 2;
  m.activations = batch * per_image;
  m.runtime = on_gpu(config.vision.devices.front()) ? kCudaRuntimeBytes : 0;
  return m;
}

StageMemory predict_language_memory(const PipelineConfig& config, const LlavaConfig& model) {
  const uint64_t bytes = element_size(config.model.dtype);
  const auto& t = model.text;
  const uint64_t batch = static_cast<uint64_t>(config.language.batch_size);
  StageMemory m;
  m.weights = static_cast<uint64_t>(model.language_parameters()) * bytes;
  m.kv_cache = batch * static_cast<uint64_t>(context_tokens(config, model)) *
               static_cast<uint64_t>(model.kv_bytes_per_token(bytes));
  // One prefill chunk: residual, q/k/v/o, the MLP's gate and up, attention scores
  // against the whole context, and float32 logits for the batch's last positions.
  const uint64_t chunk = static_cast<uint64_t>(std::min<int64_t>(kPrefillChunk, context_tokens(config, model)));
  m.activations = chunk * (6 * t.hidden_size + 3 * t.intermediate_size) * bytes +
                  t.num_attention_heads * chunk * context_tokens(config, model) * 4 +
                  batch * t.vocab_size * 4 * 2;
  m.runtime = on_gpu(config.language.devices.front()) ? kCudaRuntimeBytes : 0;
  return m;
}

Plan make_plan(const PipelineConfig& config, const LlavaConfig& model) {
  Plan plan;
  plan.mode = config.mode;
  const StageMemory vision = predict_vision_memory(config, model);
  const StageMemory language = predict_language_memory(config, model);
  const bool sequential = config.mode == Mode::kSequential;
  for (const StageSection* stage : {&config.vision, &config.language}) {
    for (int r = 0; r < stage->replicas; ++r) {
      PlannedProcess p;
      p.stage = stage->name;
      p.replica = r;
      p.name = stage->name + "-" + std::to_string(r);
      p.device = stage->devices[static_cast<size_t>(r) % stage->devices.size()];
      p.memory = stage->name == "vision" ? vision : language;
      p.memory_limit = stage->memory_limit;
      if (sequential) {
        p.holds = stage->name == "vision"
                      ? "turn 1 of each round: encodes every queued image, then " +
                            std::string(stage->release == Release::kExit ? "exits" : "unloads")
                      : "turn 2 of each round: generates for every encoded request, then " +
                            std::string(stage->release == Release::kExit ? "exits" : "unloads");
      } else {
        p.holds = "its whole life";
      }
      if (p.memory_limit > 0 && p.memory.total() > p.memory_limit) {
        plan.problems.push_back(p.name + " needs " + format_bytes(p.memory.total()) +
                                " but memory_limit is " + format_bytes(p.memory_limit) + ": " +
                                format_bytes(p.memory.total() - p.memory_limit) + " short");
      }
      plan.processes.push_back(std::move(p));
    }
  }
  std::map<std::string, PlannedDevice> devices;
  for (const auto& p : plan.processes) {
    PlannedDevice& d = devices[p.device];
    d.device = p.device;
    d.processes.push_back(p.name);
    // Sequential stages take turns, so a device's peak is the larger stage; concurrent
    // processes on one device add up.
    d.predicted_peak = sequential ? std::max(d.predicted_peak, p.memory.total())
                                  : d.predicted_peak + p.memory.total();
  }
  for (auto& [name, d] : devices) {
    auto capacity = config.device_memory.find(name);
    if (capacity != config.device_memory.end()) {
      d.capacity = capacity->second;
      if (d.predicted_peak > d.capacity) {
        plan.problems.push_back(name + " would need " + format_bytes(d.predicted_peak) +
                                " but has " + format_bytes(d.capacity) + ": " +
                                format_bytes(d.predicted_peak - d.capacity) + " short");
      }
    }
    plan.devices.push_back(d);
  }
  return plan;
}

std::string describe(const Plan& plan, const PipelineConfig& config, const LlavaConfig& model) {
  std::ostringstream out;
  out << "pipeline " << config.path << ": " << to_string(plan.mode) << ", "
      << to_string(config.model.dtype) << " weights from " << config.model.checkpoint << "\n";
  out << "model: vision " << model.vision.num_hidden_layers << " layers (runs "
      << model.vision_layers_needed() << "), " << model.image_tokens()
      << " tokens per image; language " << model.text.num_hidden_layers << " layers, hidden "
      << model.text.hidden_size << ", " << model.text.num_attention_heads << "/"
      << model.text.num_key_value_heads << " heads; "
      << (model.vision_parameters() + model.projector_parameters() + model.language_parameters()) /
             1e6
      << "M parameters used\n\n";
  out << "processes:\n";
  for (const auto& p : plan.processes) {
    out << "  " << p.name << " on " << p.device << ", holds it: " << p.holds << "\n"
        << "    predicted peak " << format_bytes(p.memory.total()) << " (weights "
        << format_bytes(p.memory.weights);
    if (p.memory.kv_cache) out << ", kv cache " << format_bytes(p.memory.kv_cache);
    out << ", activations " << format_bytes(p.memory.activations);
    if (p.memory.runtime) out << ", runtime " << format_bytes(p.memory.runtime);
    out << ")";
    if (p.memory_limit) out << ", limit " << format_bytes(p.memory_limit);
    out << "\n";
  }
  out << "\ndevices:\n";
  for (const auto& d : plan.devices) {
    out << "  " << d.device << ": predicted peak " << format_bytes(d.predicted_peak);
    if (d.capacity) out << " of " << format_bytes(d.capacity);
    out << (plan.mode == Mode::kSequential ? " (stages take turns: the larger one)"
                                           : " (processes together)");
    out << "; used by";
    for (const auto& name : d.processes) out << " " << name;
    out << "\n";
  }
  if (!plan.problems.empty()) {
    out << "\nthe plan does not fit:\n";
    for (const auto& problem : plan.problems) out << "  " << problem << "\n";
  }
  return out.str();
}

}  // namespace llava
