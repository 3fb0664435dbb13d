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
#include "stages/checkpoint/staging.h"

namespace llava {

class Checkpoint {
 public:
  explicit Checkpoint(const std::string& folder);
  ~Checkpoint();

  const std::string& folder() const { return folder_; }
  bool has(const std::string& canonical) const { return names_.count(canonical) > 0; }
  // The shape the file declares; throws CheckpointError when the tensor is missing.
  std::vector<int64_t> shape(const std::string& canonical) const;
  // The name as the file spells it, for messages.
  std::string original_name(const std::string& canonical) const;

  // Reads one tensor into `options` (device, dtype). To a CUDA device in the file's own
  // dtype it goes through pinned staging buffers, asynchronously on the device's current
  // stream (later work there sees it); otherwise one copy straight from the mapped file.
  // Throws CheckpointError naming the tensor when it is missing or its shape is not
  // `shape`.
  at::Tensor load(const std::string& canonical, const std::vector<int64_t>& shape,
                  const at::TensorOptions& options) const;

  // Called after every tensor loaded: a long load stays responsive (the worker sends
  // heartbeats from it) without a second thread.
  void on_tensor_loaded(std::function<void()> callback) { on_tensor_ = std::move(callback); }
  // Bytes loaded so far (in the target dtype).
  int64_t bytes_loaded() const { return bytes_loaded_; }
  // Waits for staged copies in flight and frees the pinned staging buffers (the
  // destructor does too): call once the model is built.
  void release_staging() const;

 private:
  std::function<void()> on_tensor_;
  mutable int64_t bytes_loaded_ = 0;
  mutable std::unique_ptr<PinnedStaging> staging_;  // made by the first staged load
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
