// The YAML file's schema: each section's keys, defaults and checks -> PipelineConfig. The
// reading itself (file:line:column errors, unknown and duplicate keys) is common/yaml_reader.
#include "common/config.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>

#include "common/curve.h"
#include "common/errors.h"
#include "common/units.h"
#include "common/utf8.h"
#include "common/yaml_reader.h"

namespace llava {
namespace fs = std::filesystem;

const char* to_string(Mode mode) {
  return mode == Mode::kSequential ? "sequential" : mode == Mode::kConcurrent ? "concurrent" : "auto";
}
const char* to_string(Release release) {
  switch (release) {
    case Release::kExit: return "exit";
    case Release::kUnload: return "unload";
    case Release::kOffload: return "offload";
    case Release::kAuto: break;
  }
  return "auto";
}
const char* to_string(Quantize quantize) {
  return quantize == Quantize::kInt8 ? "int8" : quantize == Quantize::kInt4 ? "int4" : "none";
}
const char* to_string(Offload offload) { return offload == Offload::kLayers ? "layers" : "none"; }
const char* to_string(WeightDType dtype) {
  switch (dtype) {
    case WeightDType::kFloat32: return "float32";
    case WeightDType::kFloat16: return "float16";
    case WeightDType::kBFloat16: return "bfloat16";
  }
  return "?";
}
size_t element_size(WeightDType dtype) { return dtype == WeightDType::kFloat32 ? 4 : 2; }

bool is_valid_device(const std::string& device) {
  if (device == "cpu") return true;
  if (device.rfind("cuda:", 0) != 0 || device.size() == 5 || device.size() > 8) return false;
  return std::all_of(device.begin() + 5, device.end(), [](char c) { return c >= '0' && c <= '9'; });
}

namespace {

// The generation section's sampling keys, for common/sampling's list of them.
class SectionSamplingKeys : public SamplingKeyReader {
 public:
  explicit SectionSamplingKeys(YamlSection& section) : section_(section) {}

  std::optional<long long> whole(const std::string& key, long long lo, long long hi) override {
    if (!section_.find(key)) return std::nullopt;
    return section_.integer(key, 0, lo, hi);
  }
  std::optional<double> real(const std::string& key, double lo, double hi, bool lo_open) override {
    if (!section_.find(key)) return std::nullopt;
    return section_.real(key, 0.0, lo, hi, lo_open);
  }
  // YAML integers are read signed: a file's seed is at most 2^63 - 1.
  std::optional<uint64_t> seed(const std::string& key) override {
    auto value = whole(key, 0, std::numeric_limits<long long>::max());
    if (!value) return std::nullopt;
    return static_cast<uint64_t>(*value);
  }

 private:
  YamlSection& section_;
};

StageSection parse_stage(YamlSection& stages, const std::string& name, const std::string& file) {
  YamlSection s = stages.child(name);
  if (!s.present()) s.fail_at(stages.mark(), "stages." + name + ": section is missing");
  StageSection stage;
  stage.name = name;
  stage.replicas = static_cast<int>(s.integer("replicas", 1, 1, 64));
  YAML::Node devices = s.find("devices");
  if (!devices) s.fail_at(s.mark(), "stages." + name + ".devices: missing (e.g. [cuda:0])");
  std::vector<YAML::Node> device_nodes;
  if (devices.IsScalar()) {
    device_nodes.push_back(devices);
  } else if (devices.IsSequence() && devices.size() > 0) {
    for (const auto& d : devices) device_nodes.push_back(d);
  } else {
    s.fail(devices, "stages." + name + ".devices: expected a device or a non-empty list");
  }
  for (const auto& d : device_nodes) {
    std::string device = s.scalar("devices", d);
    if (!is_valid_device(device)) {
      s.fail(d, "stages." + name + ".devices: '" + device + "' is not a device (cpu or cuda:N)");
    }
    if (std::find(stage.devices.begin(), stage.devices.end(), device) != stage.devices.end()) {
      s.fail(d, "stages." + name + ".devices: '" + device + "' is listed twice");
    }
    stage.devices.push_back(device);
  }
  stage.memory_limit = s.bytes("memory_limit", 0);
  stage.batch_size = static_cast<int>(s.integer("batch_size", 8, 1, 1024));
  stage.release = s.choice<Release>("release", Release::kAuto,
                                    {{"exit", Release::kExit},
                                     {"unload", Release::kUnload},
                                     {"offload", Release::kOffload},
                                     {"auto", Release::kAuto}});
  stage.external = s.choice<bool>("launch", false, {{"local", false}, {"external", true}});
  stage.cuda_graphs = s.boolean("cuda_graphs", true);
  if (name == "language") {
    stage.max_context = static_cast<int>(s.integer("max_context", 0, 0, 1 << 20));
    stage.prefill_chunk = static_cast<int>(s.integer("prefill_chunk", 1024, 1, 1 << 20));
    stage.min_batch = static_cast<int>(s.integer("min_batch", 4, 1, 1024));
    stage.quantize = s.choice<Quantize>(
        "quantize", Quantize::kNone,
        {{"none", Quantize::kNone}, {"int8", Quantize::kInt8}, {"int4", Quantize::kInt4}});
    stage.offload = s.choice<Offload>("offload", Offload::kNone,
                                      {{"none", Offload::kNone}, {"layers", Offload::kLayers}});
  }
  s.finish();
  (void)file;
  return stage;
}

// A path from the config: a relative one is resolved against the config file's folder.
std::string relative_to(const std::string& config_file, const std::string& path) {
  if (fs::path(path).is_absolute()) return path;
  return (fs::path(config_file).parent_path() / path).lexically_normal().string();
}

// Placement rules that need both stages: one device in sequential mode, no silent
// sharing in concurrent mode.
void check_placement(const PipelineConfig& config, YamlSection& root,
                     const YAML::Node& stages_node) {
  auto stage_mark = [&](const std::string& name) { return stages_node[name].Mark(); };
  for (const StageSection* stage : {&config.vision, &config.language}) {
    if (!stage->external) continue;
    if (config.mode != Mode::kConcurrent) {
      root.fail_at(stage_mark(stage->name), "stages." + stage->name +
                                                ".launch: external workers need mode: concurrent "
                                                "(sequential mode starts and stops its processes)");
    }
    const std::string& e = config.coordinator.endpoint;
    if (e.find("{pid}") != std::string::npos || e.find("{rundir}") != std::string::npos ||
        e.find(":*") != std::string::npos) {
      root.fail_at(stage_mark(stage->name), "stages." + stage->name + ".launch: external workers need a fixed " +
                                                "coordinator.endpoint to connect to, got '" + e + "'");
    }
  }
  if (config.mode != Mode::kConcurrent) {  // auto may fall back to sequential: its rules
    for (const StageSection* stage : {&config.vision, &config.language}) {
      if (stage->replicas != 1) {
        root.fail_at(stage_mark(stage->name),
                     "stages." + stage->name + ".replicas: sequential mode runs one replica per " +
                         "stage, got " + std::to_string(stage->replicas) +
                         " (use mode: concurrent for replicas)");
      }
      if (stage->devices.size() != 1 || stage->devices[0] != config.vision.devices[0]) {
        root.fail_at(stage_mark(stage->name),
                     "stages." + stage->name + ".devices: sequential mode takes turns on one " +
                         "device; both stages must list the same single device");
      }
    }
    return;
  }
  for (const StageSection* stage : {&config.vision, &config.language}) {
    if (config.mode == Mode::kConcurrent && stage->release != Release::kAuto) {
      root.fail_at(stage_mark(stage->name),
                   "stages." + stage->name +
                       ".release: only sequential mode gives devices back; remove it");
    }
    if (stage->replicas > static_cast<int>(stage->devices.size()) && !config.share_devices) {
      root.fail_at(stage_mark(stage->name),
                   "stages." + stage->name + ": " + std::to_string(stage->replicas) +
                       " replicas over " + std::to_string(stage->devices.size()) +
                       " device(s); list more devices or set share_devices: true");
    }
  }
  if (!config.share_devices) {
    for (const auto& device : config.vision.devices) {
      if (device == "cpu") continue;  // the CPU is not leased
      if (std::count(config.language.devices.begin(), config.language.devices.end(), device)) {
        root.fail_at(stage_mark("language"),
                     "stages.language.devices: " + device +
                         " is also a vision device; concurrent stages need their own devices, " +
                         "or set share_devices: true");
      }
    }
  }
}

}  // namespace

PipelineConfig parse_config(const std::string& yaml_text, const std::string& file,
                            bool check_files) {
  YAML::Node root_node = load_yaml(yaml_text, file);
  if (!root_node || root_node.IsNull()) throw ConfigError(file + ": the file is empty");

  PipelineConfig config;
  config.path = file;
  YamlSection root(root_node, "", file);
  config.mode = root.choice<Mode>("mode", Mode::kAuto,
                                  {{"sequential", Mode::kSequential},
                                   {"concurrent", Mode::kConcurrent},
                                   {"auto", Mode::kAuto}});
  config.share_devices = root.boolean("share_devices", false);

  YamlSection memory = root.child("device_memory");
  if (memory.present()) {
    for (const auto& entry : root_node["device_memory"]) {
      std::string device = entry.first.Scalar();
      if (!is_valid_device(device)) {
        memory.fail(entry.first, "device_memory: '" + device + "' is not a device");
      }
      memory.bytes(device, 0);
      config.device_memory[device] = *parse_bytes(entry.second.Scalar());
    }
  }

  YamlSection model = root.child("model");
  if (!model.present()) root.fail_at(root_node.Mark(), "model: section is missing");
  YAML::Node checkpoint_node = model.find("checkpoint");
  if (!checkpoint_node) model.fail_at(model.mark(), "model.checkpoint: missing");
  config.model.checkpoint = relative_to(file, model.scalar("checkpoint", checkpoint_node));
  if (check_files && !fs::exists(fs::path(config.model.checkpoint) / "config.json")) {
    model.fail(checkpoint_node, "model.checkpoint: no config.json in '" +
                                    config.model.checkpoint + "'");
  }
  config.model.dtype = model.choice<WeightDType>(
      "dtype", WeightDType::kFloat16,
      {{"float16", WeightDType::kFloat16}, {"fp16", WeightDType::kFloat16},
       {"bfloat16", WeightDType::kBFloat16}, {"bf16", WeightDType::kBFloat16},
       {"float32", WeightDType::kFloat32}, {"fp32", WeightDType::kFloat32}});
  config.model.name = model.str("name", fs::path(config.model.checkpoint).filename().string());
  model.finish();

  YamlSection stages = root.child("stages");
  if (!stages.present()) root.fail_at(root_node.Mark(), "stages: section is missing");
  config.vision = parse_stage(stages, "vision", file);
  config.language = parse_stage(stages, "language", file);
  stages.finish();

  // server: the HTTP server's limits, read by launch/server_config.cpp (serve --http).
  root.find("server");

  YamlSection coord = root.child("coordinator");
  auto& c = config.coordinator;
  YAML::Node endpoint = coord.find("endpoint");
  if (endpoint) {
    c.endpoint = coord.scalar("endpoint", endpoint);
    if (c.endpoint.rfind("ipc://", 0) != 0 && c.endpoint.rfind("tcp://", 0) != 0) {
      coord.fail(endpoint, "coordinator.endpoint: '" + c.endpoint +
                               "' must start with ipc:// or tcp://");
    }
  }
  c.heartbeat_interval_ms = coord.millis("heartbeat_interval", c.heartbeat_interval_ms);
  c.liveness = static_cast<int>(coord.integer("liveness", c.liveness, 1, 1000));
  c.embedding_memory = coord.bytes("embedding_memory", c.embedding_memory);
  c.embedding_cache = coord.bytes("embedding_cache", c.embedding_cache);
  c.spill_dir = coord.str("spill_dir", c.spill_dir);
  c.shared_memory = coord.bytes("shared_memory", c.shared_memory);
  c.max_message_size = coord.bytes("max_message_size", c.max_message_size);
  if (c.max_message_size < (1u << 20)) {
    coord.fail(coord.find("max_message_size"),
               "coordinator.max_message_size: at least 1MiB is needed for one image");
  }
  c.max_restarts_per_minute =
      static_cast<int>(coord.integer("max_restarts_per_minute", c.max_restarts_per_minute, 0, 1000));
  c.restart_window_ms = coord.millis("restart_window", c.restart_window_ms);
  c.queue_capacity = static_cast<int>(coord.integer("queue_capacity", c.queue_capacity, 1, 1 << 24));
  c.swap_after_ms = coord.millis("swap_after", c.swap_after_ms);
  c.swap_batch = static_cast<int>(coord.integer("swap_batch", c.swap_batch, 0, 1 << 20));
  c.drain_timeout_ms = coord.millis("drain_timeout", c.drain_timeout_ms);
  c.external_wait_ms = coord.millis("external_wait", c.external_wait_ms);
  YamlSection curve = coord.child("curve");
  if (curve.present()) {
    auto key_file = [&](const YAML::Node& node, const std::string& key, bool secret) {
      const std::string resolved = relative_to(file, curve.scalar(key, node));
      if (check_files) {
        try {
          read_curve_key(resolved, secret);
        } catch (const ConfigError& e) {
          curve.fail(node, curve.key_name(key) + ": " + e.what());
        }
      }
      return resolved;
    };
    for (const char* key : {"server_key", "worker_key"}) {
      YAML::Node node = curve.find(key);
      if (!node) curve.fail_at(curve.mark(), curve.key_name(key) + ": missing (a NAME.key_secret file)");
      // The coordinator needs its secret key (checked when it starts); a worker only the
      // server's public key. Workers need their own secret key; where every stage is
      // external (a cluster manager's workers hold their own), the coordinator's copy of
      // the config may name just the workers' public key.
      const bool server = std::string(key) == "server_key";
      const bool all_external = config.vision.external && config.language.external;
      (server ? c.curve_server_key : c.curve_worker_key) = key_file(node, key, !server && !all_external);
    }
    YAML::Node allowed = curve.find("allowed");
    if (allowed) {
      if (!allowed.IsSequence()) curve.fail(allowed, curve.key_name("allowed") + ": expected a list of key files");
      for (const auto& item : allowed) c.curve_allowed.push_back(key_file(item, "allowed", false));
    }
    if (c.endpoint.rfind("ipc://", 0) == 0) {
      curve.fail_at(curve.mark(), "coordinator.curve: encryption is for tcp:// endpoints (ipc:// stays on this host)");
    }
  }
  curve.finish();
  coord.finish();

  YamlSection gen = root.child("generation");
  auto& g = config.generation;
  SectionSamplingKeys sampling_keys(gen);
  read_sampling_keys(sampling_keys, g);
  YAML::Node chat = gen.find("chat_template");
  if (chat) {
    g.chat_template = gen.scalar("chat_template", chat);
    if (g.chat_template.find("{prompt}") == std::string::npos) {
      gen.fail(chat, "generation.chat_template: must contain {prompt}");
    }
  }
  YAML::Node stop = gen.find("stop");
  if (stop) {
    if (stop.IsScalar()) {
      g.stop = {stop.Scalar()};
    } else if (stop.IsSequence()) {
      for (const auto& item : stop) g.stop.push_back(gen.scalar("stop", item));
    } else {
      gen.fail(stop, "generation.stop: expected a string or a list of strings");
    }
    const std::string problem = stop_strings_problem(g.stop);
    if (!problem.empty()) gen.fail(stop, "generation.stop: " + problem);
  }
  gen.finish();

  root.finish();
  check_placement(config, root, root_node["stages"]);
  return config;
}

std::string stop_strings_problem(const std::vector<std::string>& stop) {
  if (stop.size() > 16) return std::to_string(stop.size()) + " stop strings; at most 16";
  for (const auto& s : stop) {
    if (s.empty()) return "a stop string is empty";
    if (s.size() > 256)
      return "a stop string of " + std::to_string(s.size()) + " bytes; at most 256";
    // The answer is cut where a stop string starts: only whole characters may match, or
    // the text would end inside one.
    if (utf8_error_offset(s) != std::string::npos) return "a stop string is not valid UTF-8";
  }
  return "";
}

PipelineConfig load_config(const std::string& path, bool check_files) {
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": cannot open the config file");
  std::stringstream text;
  text << in.rdbuf();
  return parse_config(text.str(), path, check_files);
}

}  // namespace llava
