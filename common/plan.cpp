// Placement and memory prediction. The estimates count weights exactly and bound the
// working set of one batch; the workers report what they really used.
#include "common/plan.h"

#include <algorithm>
#include <map>
#include <sstream>

#include "common/gpu_info.h"
#include "common/units.h"

namespace llava {
namespace {

constexpr int64_t kPrefillChunk = 512;                // tokens per prefill step

bool on_gpu(const std::string& device) { return device != "cpu"; }

}  // namespace

int64_t context_tokens(const PipelineConfig& config, const LlavaConfig& model) {
  return config.language.max_context > 0 ? config.language.max_context
                                          : model.text.max_position_embeddings;
}

uint64_t image_embedding_bytes(const PipelineConfig& config, const LlavaConfig& model) {
  return static_cast<uint64_t>(model.image_tokens()) *
         static_cast<uint64_t>(model.text.hidden_size) * element_size(config.model.dtype);
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
                       2 * image_embedding_bytes(config, model);
  m.activations = batch * per_image;
  m.runtime = on_gpu(config.vision.devices.front()) ? kCudaRuntimeBytes : 0;
  return m;
}

uint64_t linear_weight_bytes(int64_t out, int64_t in, Quantize quantize, uint64_t element_bytes) {
  const uint64_t o = static_cast<uint64_t>(out), i = static_cast<uint64_t>(in);
  switch (quantize) {
    case Quantize::kInt8:
      return o * i + o * element_bytes;
    case Quantize::kInt4: {
      const uint64_t groups = (i + kInt4Group - 1) / kInt4Group;
      return o * ((i + 1) / 2) + o * groups * element_bytes;
    }
    case Quantize::kNone:
      break;
  }
  return o * i * element_bytes;
}

namespace {

// Everything on the language device except its weights.
StageMemory language_working_memory(const PipelineConfig& config, const LlavaConfig& model) {
  const uint64_t bytes = element_size(config.model.dtype);
  const auto& t = model.text;
  const uint64_t batch = static_cast<uint64_t>(config.language.batch_size);
  const uint64_t context = static_cast<uint64_t>(context_tokens(config, model));
  StageMemory m;
  m.kv_cache = batch * context * static_cast<uint64_t>(model.kv_bytes_per_token(bytes));
  // One prefill chunk: residual, q/k/v/o, the MLP's gate and up, attention scores
  // against the whole context, float32 logits for the batch's last positions, and for
  // quantized weights the largest matrix dequantized for the chunk's matrix product.
  const uint64_t chunk = std::min<uint64_t>(static_cast<uint64_t>(config.language.prefill_chunk), context);
  m.activations = chunk * (6 * t.hidden_size + 3 * t.intermediate_size) * bytes +
                  t.num_attention_heads * chunk * context * 4 + batch * t.vocab_size * 4 * 2;
  if (config.language.quantize != Quantize::kNone) {
    m.activations += 2 * static_cast<uint64_t>(t.intermediate_size * t.hidden_size) * bytes;
  }
  if (on_gpu(config.language.devices.front())) {
    m.activations += kAllocatorSlackBytes;
    m.runtime = kCudaRuntimeBytes;
  }
  return m;
}

}  // namespace

LanguageLayout language_layout(const PipelineConfig& config, const LlavaConfig& model) {
  const uint64_t bytes = element_size(config.model.dtype);
  const auto& t = model.text;
  const Quantize qz = config.language.quantize;
  const int64_t h = t.hidden_size, in = t.intermediate_size;
  const int64_t q = t.num_attention_heads * t.head_dim, kv = t.num_key_value_heads * t.head_dim;
  LanguageLayout layout;
  layout.layer_bytes = linear_weight_bytes(q + 2 * kv, h, qz, bytes) +
                       linear_weight_bytes(h, q, qz, bytes) +
                       linear_weight_bytes(2 * in, h, qz, bytes) +
                       linear_weight_bytes(h, in, qz, bytes) +
                       static_cast<uint64_t>(2 * h + (t.attention_bias ? q + 2 * kv + h : 0) +
                                             (t.mlp_bias ? 2 * in + h : 0)) * bytes;
  const uint64_t embeddings = static_cast<uint64_t>(t.vocab_size * h) * bytes;
  // The output layer is int8 in both quantized modes: its error goes straight into the
  // logits.
  const Quantize head_quantize = qz == Quantize::kNone ? Quantize::kNone : Quantize::kInt8;
  layout.embeddings_on_host = !t.tie_word_embeddings &&
                              (qz != Quantize::kNone || config.language.offload == Offload::kLayers);
  layout.head_bytes = static_cast<uint64_t>(h) * bytes +
                      (t.tie_word_embeddings ? embeddings
                                             : linear_weight_bytes(t.vocab_size, h, head_quantize, bytes));
  if (layout.embeddings_on_host) {
    layout.host_bytes += embeddings;
  } else if (!t.tie_word_embeddings) {
    layout.head_bytes += embeddings;
  }
  const int layers = static_cast<int>(t.num_hidden_layers);
  layout.resident_layers = layers;
  if (config.language.offload == Offload::kLayers) {
    layout.resident_layers = 0;
    const uint64_t limit = config.language.memory_limit;
    const uint64_t fixed = language_working_memory(config, model).total() + layout.head_bytes +
                           2 * layout.layer_bytes;
    if (limit > fixed && layout.layer_bytes > 0) {
      layout.resident_layers = static_cast<int>(std::min<uint64_t>(layers, (limit - fixed) / layout.layer_bytes));
    }
    // Every layer fits beside the window: no window is needed.
    if (limit > 0 && limit >= fixed - 2 * layout.layer_bytes + layers * layout.layer_bytes) {
      layout.resident_layers = layers;
    }
    layout.streamed_layers = layers - layout.resident_layers;
    layout.host_bytes += layout.layer_bytes * static_cast<uint64_t>(layout.streamed_layers);
  }
  return layout;
}

StageMemory predict_language_memory(const PipelineConfig& config, const LlavaConfig& model) {
  StageMemory m = language_working_memory(config, model);
  m.weights = language_layout(config, model).device_weight_bytes();
  return m;
}

PipelineConfig resolve_mode(const PipelineConfig& config, const LlavaConfig& model,
                            std::string* decision) {
  if (config.mode != Mode::kAuto) return config;
  PipelineConfig sequential = config;
  sequential.mode = Mode::kSequential;
  PipelineConfig together = config;
  together.mode = Mode::kConcurrent;
  together.share_devices = true;
  const std::string device = config.vision.devices.at(0);
  if (device == "cpu") {
    *decision = "mode auto: concurrent (on the CPU, nothing is leased)";
    return together;
  }
  const auto capacity = config.device_memory.find(device);
  if (capacity == config.device_memory.end()) {
    *decision = "mode auto: sequential (device_memory." + device +
                " is not set, so whether both stages fit together is unknown)";
    return sequential;
  }
  const int configured = config.language.batch_size;
  const int lowest = std::min(configured, config.language.min_batch);
  for (int batch = configured; batch >= lowest; --batch) {
    together.language.batch_size = batch;
    const uint64_t vision = predict_vision_memory(together, model).total();
    const uint64_t language = predict_language_memory(together, model).total();
    if (vision + language > capacity->second) continue;
    const uint64_t room = capacity->second - vision - language;
    together.vision.memory_limit = vision + room / 2;
    together.language.memory_limit = language + room / 2;
    if (!make_plan(together, model).problems.empty()) continue;
    *decision = "mode auto: concurrent on " + device + " (vision " + format_bytes(vision) +
                " + language " + format_bytes(language) + " of " + format_bytes(capacity->second) +
                (batch == configured ? ")"
                                     : "), the language batch cut from " + std::to_string(configured) +
                                           " to " + std::to_string(batch) + " sequences (min_batch " +
                                           std::to_string(config.language.min_batch) + ") to fit");
    return together;
  }
  together.language.batch_size = lowest;
  *decision = "mode auto: sequential (together they need " +
              format_bytes(predict_vision_memory(together, model).total() +
                           predict_language_memory(together, model).total()) +
              " even with a language batch of " + std::to_string(lowest) + "; " + device + " has " +
              format_bytes(capacity->second) + ")";
  return sequential;
}

uint64_t offload_bytes(const PipelineConfig& config, const LlavaConfig& model, const std::string& stage) {
  if (stage == "vision") return predict_vision_memory(config, model).weights;
  const LanguageLayout layout = language_layout(config, model);
  // Streaming buffers are made anew; the streamed layers are in host memory already.
  return layout.head_bytes + layout.layer_bytes * static_cast<uint64_t>(layout.resident_layers);
}

PipelineConfig resolve_release(const PipelineConfig& config, const LlavaConfig& model,
                               uint64_t host_available, std::string* decision) {
  decision->clear();
  if (config.mode != Mode::kSequential) return config;
  PipelineConfig out = config;
  std::vector<StageSection*> automatic;
  for (StageSection* stage : {&out.vision, &out.language}) {
    if (stage->release == Release::kAuto) automatic.push_back(stage);
  }
  if (automatic.empty()) return out;
  if (!on_gpu(config.vision.devices.front())) {
    for (StageSection* stage : automatic) stage->release = Release::kOffload;
    *decision = "release auto: offload (on the CPU the weights stay where they are)";
    return out;
  }
  // Explicit offloads take their share of the host first.
  const uint64_t kept =
      config.coordinator.embedding_memory + config.coordinator.embedding_cache +
      config.coordinator.shared_memory * static_cast<uint64_t>(config.vision.replicas) +
      kHostReserveBytes;
  uint64_t room = host_available > kept ? host_available - kept : 0;
  for (const StageSection* stage : {&config.vision, &config.language}) {
    if (stage->release != Release::kOffload) continue;
    const uint64_t bytes = offload_bytes(config, model, stage->name);
    room = room > bytes ? room - bytes : 0;
  }
  // Each automatic stage offloads or exits. Offloading the language stage saves the larger
  // reload, so choices that offload it come first; a choice must fit the host, and the
  // device too (an offloaded stage keeps its CUDA context through the other's turn).
  for (StageSection* stage : automatic) stage->release = Release::kExit;
  const size_t problems_when_exiting = make_plan(out, model).problems.size();
  const size_t n = automatic.size();
  const std::vector<std::vector<bool>> choices =
      n == 2 ? std::vector<std::vector<bool>>{{true, true}, {false, true}, {true, false}, {false, false}}
             : std::vector<std::vector<bool>>{{true}, {false}};
  std::vector<uint64_t> stage_bytes(n);
  for (size_t i = 0; i < n; ++i) stage_bytes[i] = offload_bytes(config, model, automatic[i]->name);
  std::vector<bool> host_short(n, false), device_short(n, false);
  for (const auto& choice : choices) {
    uint64_t bytes = 0;
    for (size_t i = 0; i < n; ++i) {
      if (choice[i]) bytes += stage_bytes[i];
    }
    for (size_t i = 0; i < n; ++i) automatic[i]->release = choice[i] ? Release::kOffload : Release::kExit;
    if (bytes > room) {
      for (size_t i = 0; i < n; ++i) host_short[i] = host_short[i] || (choice[i] && stage_bytes[i] > room);
      continue;
    }
    if (make_plan(out, model).problems.size() > problems_when_exiting) {
      for (size_t i = 0; i < n; ++i) device_short[i] = device_short[i] || choice[i];
      continue;
    }
    break;  // the all-exit choice, last, always passes
  }
  std::ostringstream why;
  why << "release auto (host memory available " << format_bytes(host_available) << ", "
      << format_bytes(kept) << " kept for embeddings and the rest of the host):";
  for (size_t i = 0; i < n; ++i) {
    const StageSection* stage = automatic[i];
    const uint64_t bytes = stage_bytes[i];
    if (stage->release == Release::kOffload) {
      why << " " << stage->name << " offloads (" << format_bytes(bytes) << " of weights kept in pinned host memory);";
    } else if (host_short[i] || !device_short[i]) {
      why << " " << stage->name << " exits (its " << format_bytes(bytes) << " of weights do not fit in the "
          << format_bytes(room) << " left; each turn reloads them from the checkpoint);";
    } else {
      why << " " << stage->name << " exits (its process kept through the other stage's turn would put "
          << stage->devices.front() << " over its device_memory);";
    }
  }
  std::string text = why.str();
  text.pop_back();
  *decision = text;
  return out;
}

Plan make_plan(const PipelineConfig& config, const LlavaConfig& model) {
  if (config.mode == Mode::kAuto) {
    std::string decision;
    Plan plan = make_plan(resolve_mode(config, model, &decision), model);
    plan.decision = decision + (plan.decision.empty() ? "" : "\n" + plan.decision);
    return plan;
  }
  if (config.mode == Mode::kSequential &&
      (config.vision.release == Release::kAuto || config.language.release == Release::kAuto)) {
    std::string decision;
    Plan plan = make_plan(resolve_release(config, model, host_memory_available(), &decision), model);
    plan.decision = decision;
    return plan;
  }
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
        const std::string then = stage->release == Release::kExit     ? "exits"
                                 : stage->release == Release::kUnload ? "unloads (the process stays)"
                                                                      : "offloads its weights to pinned host memory (the process stays; the next turn copies them back)";
        p.holds = stage->name == "vision" ? "in turns: encodes the queued images, then " + then
                                          : "in turns: generates for the encoded requests, then " + then;
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
    // Sequential stages take turns, so a device's peak is the larger stage, plus the CUDA
    // context of the other while its process stays (unload, offload); concurrent processes
    // on one device add up.
    uint64_t idle_contexts = 0;
    for (const auto& other : plan.processes) {
      const StageSection& section = other.stage == "vision" ? config.vision : config.language;
      if (&other != &p && other.device == p.device && section.release != Release::kExit) {
        idle_contexts += other.memory.runtime;
      }
    }
    d.predicted_peak = sequential ? std::max(d.predicted_peak, p.memory.total() + idle_contexts)
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
  if (!plan.decision.empty()) out << plan.decision << "\n";
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
    if (p.stage == "language" && (config.language.quantize != Quantize::kNone ||
                                  config.language.offload != Offload::kNone)) {
      const LanguageLayout layout = language_layout(config, model);
      out << "    weights " << to_string(config.language.quantize) << ", "
          << format_bytes(layout.layer_bytes) << " per layer; " << layout.resident_layers << " of "
          << model.text.num_hidden_layers << " layers on the device";
      if (layout.streamed_layers > 0) {
        out << ", " << layout.streamed_layers << " streamed from host through 2 buffers";
      }
      if (layout.host_bytes > 0) out << "; " << format_bytes(layout.host_bytes) << " in host memory";
      out << "\n";
    }
  }
  const uint64_t image_bytes = image_embedding_bytes(config, model);
  const auto& c = config.coordinator;
  out << "  coordinator (host memory): waiting embeddings up to "
      << format_bytes(c.embedding_memory) << " (then files in " << c.spill_dir
      << "), embedding cache "
      << (c.embedding_cache
              ? format_bytes(c.embedding_cache) + " (" +
                    std::to_string(c.embedding_cache / std::max<uint64_t>(image_bytes, 1)) +
                    " images of " + format_bytes(image_bytes) + ")"
              : std::string("off"))
      << ", shared memory "
      << (c.shared_memory ? format_bytes(c.shared_memory) + " per vision worker"
                          : std::string("off"))
      << "\n";
  if (plan.mode == Mode::kSequential) {
    uint64_t pinned = 0;
    std::string parts;
    for (const StageSection* stage : {&config.vision, &config.language}) {
      if (stage->release != Release::kOffload) continue;
      const uint64_t bytes = on_gpu(stage->devices.front()) ? offload_bytes(config, model, stage->name) : 0;
      pinned += bytes;
      parts += (parts.empty() ? "" : " + ") + stage->name + " " + format_bytes(bytes);
    }
    if (!parts.empty()) {
      out << "  host memory for offloaded weights (release: offload): " << format_bytes(pinned) << " pinned ("
          << parts << "); a turn copies a stage's weights back at the host link's speed\n";
    }
    const auto batch = [&](int configured, int stage_batch) {
      return std::to_string(configured > 0 ? configured : stage_batch);
    };
    out << "  turns (lazy leases): a stage keeps the device until the other has work; it "
           "gives way when it has nothing left to start, or once "
        << batch(c.swap_batch, config.vision.batch_size) << " requests wait for the vision stage ("
        << batch(c.swap_batch, config.language.batch_size) << " for the language stage) or the oldest has "
        << "waited " << format_millis(c.swap_after_ms)
        << " (coordinator.swap_batch, swap_after); requests whose images are all cached need no "
           "vision turn\n";
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
