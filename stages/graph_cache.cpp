// CUDA graph capture and replay, keyed by shape.
#include "stages/graph_cache.h"

#include <torch/version.h>

#include <map>
#include <utility>

#if defined(LLAVA_PIPE_CUDA) && TORCH_VERSION_MAJOR >= 2
#define LLAVA_PIPE_CUDA_GRAPHS 1
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace llava {

#ifdef LLAVA_PIPE_CUDA_GRAPHS
struct GraphCache::Graphs {
  struct Captured {
    at::cuda::CUDAGraph graph;
    std::vector<at::Tensor> inputs;  // static input buffers
    at::Tensor output;
  };
  std::map<int64_t, std::unique_ptr<Captured>> by_key;
  // One memory pool for every graph ({0, 0}: the first capture makes it).
  decltype(std::declval<at::cuda::CUDAGraph>().pool()) pool{0, 0};
};
#else
struct GraphCache::Graphs {};  // never made: no CUDA graphs in this build
#endif

GraphCache::GraphCache(const at::Device& device, bool wanted) : device_(device) {
#ifdef LLAVA_PIPE_CUDA_GRAPHS
  if (wanted && device.is_cuda()) graphs_ = std::make_unique<Graphs>();
#else
  (void)wanted;
#endif
}

GraphCache::~GraphCache() = default;

size_t GraphCache::size() const {
#ifdef LLAVA_PIPE_CUDA_GRAPHS
  if (graphs_) return graphs_->by_key.size();
#endif
  return 0;
}

void GraphCache::clear() {
#ifdef LLAVA_PIPE_CUDA_GRAPHS
  if (graphs_) graphs_ = std::make_unique<Graphs>();
#endif
}

at::Tensor GraphCache::run(int64_t key, const std::vector<at::Tensor>& inputs, const Step& step) {
#ifdef LLAVA_PIPE_CUDA_GRAPHS
  if (graphs_) {
    const c10::cuda::CUDAGuard device_guard(device_);  // replay and capture on this device
    auto& slot = graphs_->by_key[key];
    if (!slot) {
      auto captured = std::make_unique<Graphs::Captured>();
      for (const auto& input : inputs) captured->inputs.push_back(input.to(device_).clone());
      // Capture on a side stream after a warm-up there (cuBLAS makes its workspace for a
      // new stream on first use, which a capture must not do). The warm-up is the step
      // itself, so running it is harmless.
      at::cuda::CUDAStream current = at::cuda::getCurrentCUDAStream(device_.index());
      at::cuda::CUDAStream side = at::cuda::getStreamFromPool(false, device_.index());
      at::cuda::CUDAEvent inputs_ready, captured_done;
      inputs_ready.record(current);
      inputs_ready.block(side);
      {
        c10::cuda::CUDAStreamGuard guard(side);
        step(captured->inputs);
        captured->graph.capture_begin(graphs_->pool);
        captured->output = step(captured->inputs);
        captured->graph.capture_end();
        graphs_->pool = captured->graph.pool();
      }
      captured_done.record(side);
      captured_done.block(current);
      slot = std::move(captured);
    } else {
      for (size_t i = 0; i < inputs.size(); ++i) slot->inputs[i].copy_(inputs[i]);
    }
    slot->graph.replay();
    return slot->output;
  }
#endif
  return step(inputs);
}

}  // namespace llava
