// Layer streaming (`offload: layers`): decoder layers kept in host memory (pinned on
// CUDA) pass through two device buffers. While layer j runs, layer j + 1 is already being
// copied on a side stream; layer j + 2's copy waits until layer j's work is done with the
// buffer. The device holds two layers instead of all of them.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <vector>

#include "stages/language/llama_layer.h"

namespace llava {

class LayerStream {
 public:
  // `host`: the streamed layers, in order; the buffers are made on `device`.
  LayerStream(std::vector<LlamaLayer> host, const at::Device& device);
  ~LayerStream();

  size_t size() const { return host_.size(); }
  int64_t device_bytes() const;
  int64_t host_bytes() const;

  // f(tensor&) on every tensor of the device buffers (release: offload moves them too).
  void visit_buffers(const std::function<void(at::Tensor&)>& f) {
    for (auto& buffer : buffers_) buffer.visit(f);
  }
  // A forward pass starts: the first copies begin.
  void begin();
  // Streamed layer j on the device, ready for work queued on the current stream.
  const LlamaLayer& acquire(size_t j);
  // Layer j's work is queued: its buffer may take layer j + 2 once that work is done.
  void release(size_t j);

 private:
  void issue(size_t j);
  size_t buffer_of(size_t j) const { return j % buffers_.size(); }

  std::vector<LlamaLayer> host_;
  std::vector<LlamaLayer> buffers_;  // min(2, size()) layers on the device
  struct Sync;                       // CUDA side stream and events (empty on the CPU)
  std::unique_ptr<Sync> sync_;
};

}  // namespace llava
