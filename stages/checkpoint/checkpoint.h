// A llava-hf checkpoint folder: model.safetensors or shards listed in
// model.safetensors.index.json, under any of the three tensor-name layouts in the wild.
// Names are mapped to one canonical form: "language.<rest>", "vision.<rest>",
// "projector.<rest>", "lm_head.<rest>".
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "stages/checkpoint/safetensors.h"

namespace llava {

class Checkpoint {
 public:
  explicit Checkpoint(const std::string& folder);

  const std::string& folder() const { return folder_; }
  bool has(const std::string& canonical) const { return names_.count(canonical) > 0; }
  // The shape the file declares; throws CheckpointError when the tensor is missing.
  std::vector<int64_t> shape(const std::string& canonical) const;
  // The name as the file spells it, for messages.
  std::string original_name(const std::string& canonical) const;

  // Reads one tensor straight into `options` (device, dtype): one copy, no host staging
  // beyond the mapped file. Throws CheckpointError naming the tensor when it is missing
  // or its shape is not `shape`.
  at::Tensor load(const std::string& canonical, const std::vector<int64_t>& shape,
                  const at::TensorOptions& options) const;

  // Called after every tensor loaded: a long load stays responsive (the worker sends
  // heartbeats from it) without a second thread.
  void on_tensor_loaded(std::function<void()> callback) { on_tensor_ = std::move(callback); }
  // Bytes loaded so far (in the target dtype).
  int64_t bytes_loaded() const { return bytes_loaded_; }

 private:
  std::function<void()> on_tensor_;
  mutable int64_t bytes_loaded_ = 0;
  struct Source {
    const SafetensorsFile* file;
    std::string name;
  };
  std::string folder_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Source> names_;
};

// "language_model.model.layers.0.mlp.up_proj.weight" -> "language.layers.0.mlp.up_proj.weight";
// "" for names that belong to no part LLaVA uses.
std::string canonical_tensor_name(const std::string& name);

}  // namespace llava
