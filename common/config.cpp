// YAML -> PipelineConfig, with every error naming file:line:column and the key.
#include "common/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <sstream>

#include "common/curve.h"
#include "common/errors.h"
#include "common/units.h"
#include "common/utf8.h"

namespace llava {
namespace fs = std::filesystem;

const char* to_string(Mode mode) {
  return mode == Mode::kSequential ? "sequential" : mode == Mode::kConcurrent ? "concurrent" : "auto";
}
const char* to_string(Release release) { return release == Release::kExit ? "exit" : "unload"; }
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

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = up;
    }
  }
  return row[b.size()];
}

// Reads one YAML mapping, remembering which keys were read so that finish() can report
// the unknown ones with a did-you-mean.
class Section {
 public:
  Section(const YAML::Node& node, std::string key_path, const std::string& file)
      : node_(node), path_(std::move(key_path)), file_(file) {
    if (node_ && !node_.IsNull() && !node_.IsMap()) fail(node_, "expected a mapping of keys");
  }

  [[noreturn]] void fail(const YAML::Node& at, const std::string& what) const {
    fail_at(at.Mark(), what);
  }
  [[noreturn]] void fail_at(const YAML::Mark& mark, const std::string& what) const {
    std::ostringstream out;
    out << file_;
    if (mark.line >= 0) out << ":" << mark.line + 1 << ":" << mark.column + 1;
    out << ": " << what;
    throw ConfigError(out.str());
  }
  std::string key_name(const std::string& key) const {
    return path_.empty() ? key : path_ + "." + key;
  }

  YAML::Node find(const std::string& key) {
    known_.insert(key);
    static const YAML::Node kEmptyMap(YAML::NodeType::Map);
    if (!node_ || !node_.IsMap()) return kEmptyMap[key];  // an undefined node: "absent"
    return node_[key];
  }
  Section child(const std::string& key) { return Section(find(key), key_name(key), file_); }
  YAML::Mark mark() const { return node_ ? node_.Mark() : YAML::Mark::null_mark(); }
  bool present() const { return node_ && !node_.IsNull(); }

  std::string scalar(const std::string& key, const YAML::Node& value) const {
    if (!value.IsScalar()) fail(value, key_name(key) + ": expected a single value");
    return value.Scalar();
  }

  std::string str(const std::string& key, const std::string& fallback) {
    YAML::Node value = find(key);
    return value ? scalar(key, value) : fallback;
  }

  long long integer(const std::string& key, long long fallback, long long lo, long long hi) {
    return number<long long>(key, fallback, lo, hi, false, "a whole number",
                             [](const std::string& t, size_t* used) { return std::stoll(t, used); });
  }

  double real(const std::string& key, double fallback, double lo, double hi, bool lo_open = false) {
    return number<double>(key, fallback, lo, hi, lo_open, "a number",
                          [](const std::string& t, size_t* used) { return std::stod(t, used); });
  }

  // A scalar that `parse` must consume whole, within [lo, hi] ((lo, hi] when lo_open).
  template <typename T, typename Parse>
  T number(const std::string& key, T fallback, T lo, T hi, bool lo_open, const char* what,
           Parse parse) {
    YAML::Node value = find(key);
    if (!value) return fallback;
    std::string text = scalar(key, value);
    T parsed{};
    size_t used = 0;
    try {
      parsed = parse(text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != text.size()) {
      fail(value, key_name(key) + ": expected " + what + ", got '" + text + "'");
    }
    if (!in_range(parsed, lo, hi, lo_open)) {
      fail(value, key_name(key) + ": " + text + " is out of range " + range_text(lo, hi, lo_open));
    }
    return parsed;
  }

  bool boolean(const std::string& key, bool fallback) {
    YAML::Node value = find(key);
    if (!value) return fallback;
    std::string text = scalar(key, value);
    if (text == "true" || text == "yes" || text == "on") return true;
    if (text == "false" || text == "no" || text == "off") return false;
    fail(value, key_name(key) + ": expected true or false, got '" + text + "'");
  }

  uint64_t bytes(const std::string& key, uint64_t fallback) {
    YAML::Node value = find(key);
    if (!value) return fallback;
    std::string text = scalar(key, value);
    auto parsed = parse_bytes(text);
    if (!parsed) {
      fail(value, key_name(key) + ": expected a size such as 22GiB or 512MiB, got '" + text + "'");
    }
    return *parsed;
  }

  uint64_t millis(const std::string& key, uint64_t fallback) {
    YAML::Node value = find(key);
    if (!value) return fallback;
    std::string text = scalar(key, value);
    auto parsed = parse_millis(text);
    if (!parsed || *parsed == 0) {
      fail(value, key_name(key) + ": expected a positive duration such as 500ms or 2s, got '" +
                      text + "'");
    }
    return *parsed;
  }

  template <typename Enum>
  Enum choice(const std::string& key, Enum fallback,
              const std::vector<std::pair<std::string, Enum>>& options) {
    YAML::Node value = find(key);
    if (!value) return fallback;
    std::string text = scalar(key, value);
    std::string names;
    for (const auto& [name, option] : options) {
      if (name == text) return option;
      names += (names.empty() ? "" : ", ") + name;
    }
    fail(value, key_name(key) + ": '" + text + "' is not one of " + names);
  }

  // Unknown keys are errors: a typo must not silently fall back to a default.
  void finish() const {
    if (!node_ || !node_.IsMap()) return;
    for (const auto& entry : node_) {
      const std::string key = entry.first.Scalar();
      if (known_.count(key)) continue;
      std::string best;
      size_t best_distance = 3;
      for (const auto& candidate : known_) {
        size_t d = edit_distance(key, candidate);
        if (d < best_distance) best_distance = d, best = candidate;
      }
      std::string what = "unknown key '" + key_name(key) + "'";
      if (!best.empty()) {
        what += "; did you mean '" + best + "'?";
      } else {
        std::string all;
        for (const auto& k : known_) all += (all.empty() ? "" : ", ") + k;
        what += " (known here: " + all + ")";
      }
      fail(entry.first, what);
    }
  }

 private:
  YAML::Node node_;
  std::string path_;
  const std::string& file_;
  std::set<std::string> known_;
};

// The generation section's sampling keys, for common/sampling's list of them.
class SectionSamplingKeys : public SamplingKeyReader {
 public:
  explicit SectionSamplingKeys(Section& section) : section_(section) {}

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
  Section& section_;
};

StageSection parse_stage(Section& stages, const std::string& name, const std::string& file) {
  Section s = stages.child(name);
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
  stage.release = s.choice<Release>("release", Release::kExit,
                                    {{"exit", Release::kExit}, {"unload", Release::kUnload}});
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
void check_placement(const PipelineConfig& config, Section& root, const YAML::Node& stages_node) {
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
    if (stage->release == Release::kUnload) {
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

// YAML maps keep every duplicate key (a lookup finds the first): refuse them, naming both
// lines, rather than let one value silently win.
void refuse_duplicate_keys(const YAML::Node& node, const std::string& path, const std::string& file) {
  if (node.IsSequence()) {
    for (const auto& item : node) refuse_duplicate_keys(item, path, file);
    return;
  }
  if (!node.IsMap()) return;
  std::map<std::string, YAML::Mark> seen;
  for (const auto& entry : node) {
    const std::string key = entry.first.IsScalar() ? entry.first.Scalar() : "";
    const std::string name = path.empty() ? key : path + "." + key;
    if (entry.first.IsScalar()) {
      auto [first, inserted] = seen.emplace(key, entry.first.Mark());
      if (!inserted) {
        const YAML::Mark at = entry.first.Mark();
        throw ConfigError(file + ":" + std::to_string(at.line + 1) + ":" + std::to_string(at.column + 1) +
                          ": " + name + ": duplicate key (first given at line " +
                          std::to_string(first->second.line + 1) + "); give each key once");
      }
    }
    refuse_duplicate_keys(entry.second, name, file);
  }
}

}  // namespace

PipelineConfig parse_config(const std::string& yaml_text, const std::string& file,
                            bool check_files) {
  YAML::Node root_node;
  try {
    root_node = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    std::ostringstream out;
    out << file << ":" << e.mark.line + 1 << ":" << e.mark.column + 1 << ": " << e.msg;
    throw ConfigError(out.str());
  }
  if (!root_node || root_node.IsNull()) throw ConfigError(file + ": the file is empty");
  refuse_duplicate_keys(root_node, "", file);

  PipelineConfig config;
  config.path = file;
  Section root(root_node, "", file);
  config.mode = root.choice<Mode>("mode", Mode::kSequential,
                                  {{"sequential", Mode::kSequential},
                                   {"concurrent", Mode::kConcurrent},
                                   {"auto", Mode::kAuto}});
  config.share_devices = root.boolean("share_devices", false);

  Section memory = root.child("device_memory");
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

  Section model = root.child("model");
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

  Section stages = root.child("stages");
  if (!stages.present()) root.fail_at(root_node.Mark(), "stages: section is missing");
  config.vision = parse_stage(stages, "vision", file);
  config.language = parse_stage(stages, "language", file);
  stages.finish();

  // server: the HTTP server's limits, read by launch/server_config.cpp (serve --http).
  root.find("server");

  Section coord = root.child("coordinator");
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
  Section curve = coord.child("curve");
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

  Section gen = root.child("generation");
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
