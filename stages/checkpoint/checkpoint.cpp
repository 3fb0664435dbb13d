// Checkpoint folders: single file or shards, and the name layouts of transformers 4.3x
// (the hub), 4.52 and 5.x.
#include "stages/checkpoint/checkpoint.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <cstring>
#include <set>
#include <sstream>

#include "common/errors.h"

namespace llava {
namespace fs = std::filesystem;

std::string canonical_tensor_name(const std::string& name) {
  // Longest prefixes first: "model.vision_tower.vision_model." before "model.vision_tower.".
  static const std::pair<const char*, const char*> kPrefixes[] = {
      {"model.language_model.", "language."},         // 4.52
      {"language_model.model.", "language."},         // hub 4.3x, 5.x
      {"model.vision_tower.vision_model.", "vision."},  // 4.52
      {"vision_tower.vision_model.", "vision."},      // hub 4.3x
      {"model.vision_tower.", "vision."},
      {"vision_tower.", "vision."},                   // 5.x
      {"model.multi_modal_projector.", "projector."},
      {"multi_modal_projector.", "projector."},
      {"language_model.lm_head.", "lm_head."},
      {"lm_head.", "lm_head."},
  };
  for (const auto& [prefix, replacement] : kPrefixes) {
    if (name.rfind(prefix, 0) == 0) return replacement + name.substr(std::strlen(prefix));
  }
  return "";
}

Checkpoint::Checkpoint(const std::string& folder) : folder_(folder) {
  const fs::path dir(folder);
  std::vector<std::string> shard_files;
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::exists(index)) {
    std::ifstream in(index);
    nlohmann::json json;
    try {
      in >> json;
    } catch (const nlohmann::json::exception& e) {
      throw CheckpointError(index.string() + ": not valid JSON (" + e.what() + ")");
    }
    if (!json.contains("weight_map") || !json["weight_map"].is_object()) {
      throw CheckpointError(index.string() + ": no weight_map");
    }
    std::set<std::string> unique;
    for (const auto& [tensor, file] : json["weight_map"].items()) {
      if (!file.is_string()) throw CheckpointError(index.string() + ": '" + tensor + "' has no file");
      std::string name = file.get<std::string>();
      if (name.find('/') != std::string::npos || name == "..") {
        throw CheckpointError(index.string() + ": shard name '" + name + "' leaves the folder");
      }
      unique.insert(name);
    }
    shard_files.assign(unique.begin(), unique.end());
  } else if (fs::exists(dir / "model.safetensors")) {
    shard_files.push_back("model.safetensors");
  } else {
    throw CheckpointError(folder + ": neither model.safetensors nor model.safetensors.index.json");
  }
  for (const auto& shard : shard_files) {
    files_.push_back(std::make_unique<SafetensorsFile>((dir / shard).string()));
    for (const auto& [name, entry] : files_.back()->entries()) {
      std::string canonical = canonical_tensor_name(name);
      if (canonical.empty()) continue;
      auto [it, inserted] = names_.emplace(canonical, Source{files_.back().get(), name});
      if (!inserted) {
        throw CheckpointError(folder + ": tensor '" + canonical + "' appears twice ('" +
                              it->second.name + "' and '" + name + "')");
      }
    }
  }
}

Checkpoint::~Checkpoint() = default;

void Checkpoint::release_staging() const {
  staging_.reset();
}

std::vector<int64_t> Checkpoint::shape(const std::string& canonical) const {
  auto it = names_.find(canonical);
  if (it == names_.end()) throw CheckpointError(folder_ + ": missing tensor '" + canonical + "'");
  return it->second.file->entry(it->second.name).shape;
}

std::string Checkpoint::original_name(const std::string& canonical) const {
  auto it = names_.find(canonical);
  return it == names_.end() ? canonical : it->second.name;
}

at::Tensor Checkpoint::load(const std::string& canonical, const std::vector<int64_t>& shape,
                            const at::TensorOptions& options) const {
  auto shape_text = [](at::IntArrayRef s) {
    std::ostringstream out;
    out << "[";
    for (size_t i = 0; i < s.size(); ++i) out << (i ? ", " : "") << s[i];
    return out.str() + "]";
  };
  auto it = names_.find(canonical);
  if (it == names_.end()) {
    throw CheckpointError(folder_ + ": missing tensor '" + canonical + "' (expected shape " +
                          shape_text(shape) + ")");
  }
  const auto& entry = it->second.file->entry(it->second.name);
  if (entry.shape != shape) {
    throw CheckpointError(it->second.file->path() + ": tensor '" + it->second.name + "' has shape " +
                          shape_text(entry.shape) + ", expected " + shape_text(shape));
  }
  at::Tensor view = it->second.file->view(it->second.name);
  if (!at::isFloatingType(view.scalar_type())) {
    throw CheckpointError(it->second.file->path() + ": tensor '" + it->second.name +
                          "' is not floating point (" + entry.dtype + ")");
  }
  at::Tensor loaded;
  const bool same_dtype = !options.has_dtype() || options.dtype() == view.dtype();
  if (options.device().is_cuda() && same_dtype && PinnedStaging::available()) {
    if (!staging_) staging_ = std::make_unique<PinnedStaging>();
    loaded = at::empty(view.sizes(), view.options().device(options.device()));
    staging_->copy(view.data_ptr(), loaded.data_ptr(), loaded.nbytes(), loaded.device());
  } else {
    // One copy, straight to the target device and dtype; copy=true so that a CPU tensor of
    // the file's own dtype does not keep pointing into the mapping.
    loaded = view.to(options, /*non_blocking=*/false, /*copy=*/true);
  }
  bytes_loaded_ += static_cast<int64_t>(loaded.nbytes());
  if (on_tensor_) on_tensor_();
  return loaded;
}

}  // namespace llava
