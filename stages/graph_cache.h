// CUDA graphs by shape: a step whose shapes repeat is captured once per key and then
// replayed (one launch instead of hundreds, each costing more on the host than on the
// GPU at small batches). Inputs are copied into the graph's static buffers; every graph
// shares one memory pool. Only where LibTorch has CUDA graphs (2.x with CUDA): elsewhere
// `enabled()` is false and `run` calls the step directly.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

namespace llava {

class GraphCache {
 public:
  using Step = std::function<at::Tensor(const std::vector<at::Tensor>& inputs)>;

  // Graphs on `device` when `wanted` and the build and device allow them.
  GraphCache(const at::Device& device, bool wanted);
  ~GraphCache();

  bool enabled() const { return graphs_ != nullptr; }
  size_t size() const;  // graphs captured so far
  // Drops every graph and their memory pool (the tensors they read are about to move).
  void clear();

  // step(inputs) for the graph of `key` (captured with these inputs' shapes the first
  // time; the step must not synchronize or allocate outside LibTorch's allocator). The
  // result is the graph's output buffer: valid until the next run of the same key.
  // Without graphs, step(inputs).
  at::Tensor run(int64_t key, const std::vector<at::Tensor>& inputs, const Step& step);

 private:
  at::Device device_;
  struct Graphs;
  std::unique_ptr<Graphs> graphs_;
};

}  // namespace llava
