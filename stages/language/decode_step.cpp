// Decode-step bucketing and CUDA graph capture / replay.
#include "stages/language/decode_step.h"

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
namespace {

constexpr int64_t kKeyBucket = 256;

}  // namespace

#ifdef LLAVA_PIPE_CUDA_GRAPHS
struct DecodeStep::Graphs {
  struct Captured {
    at::cuda::CUDAGraph graph;
    at::Tensor embeds, positions, logits;  // static input and output buffers
  };
  std::map<std::pair<int64_t, int64_t>, std::unique_ptr<Captured>> by_shape;
  // One memory pool for every captured shape ({0, 0}: the first capture makes it).
  decltype(std::declval<at::cuda::CUDAGraph>().pool()) pool{0, 0};
};
#else
struct DecodeStep::Graphs {};  // never made: no CUDA graphs in this build
#endif

DecodeStep::DecodeStep(const LlamaDecoder& decoder, KvCache& cache, bool cuda_graphs)
    : decoder_(decoder), cache_(cache) {
#ifdef LLAVA_PIPE_CUDA_GRAPHS
  if (cuda_graphs && decoder.options().device().is_cuda() && !decoder.streams_layers()) {
    graphs_ = std::make_unique<Graphs>();
  }
#else
  (void)cuda_graphs;
#endif
}

DecodeStep::~DecodeStep() = default;

int64_t DecodeStep::rows_for(int64_t rows, int64_t slots) {
  int64_t r = 1;
  while (r < rows) r *= 2;
  return std::min(r, slots);
}

int64_t DecodeStep::keys_for(int64_t keys, int64_t max_tokens) {
  return std::min((keys + kKeyBucket - 1) / kKeyBucket * kKeyBucket, max_tokens);
}

size_t DecodeStep::graphs() const {
#ifdef LLAVA_PIPE_CUDA_GRAPHS
  if (graphs_) return graphs_->by_shape.size();
#endif
  return 0;
}

at::Tensor DecodeStep::run(const std::vector<int64_t>& tokens, const std::vector<int64_t>& positions,
                           int64_t keys) {
  const int64_t rows = rows_for(static_cast<int64_t>(tokens.size()), cache_.slots());
  keys = keys_for(keys, cache_.max_tokens());
  std::vector<int64_t> t(tokens), p(positions);
  t.resize(static_cast<size_t>(rows), 0);
  p.resize(static_cast<size_t>(rows), 0);
  const at::Device device = decoder_.options().device();
  at::Tensor embeds = decoder_.embed(at::tensor(t, at::kLong).view({rows, 1}));  // [R, 1, H]
  at::Tensor host_positions = at::tensor(p, at::kLong);
#ifdef LLAVA_PIPE_CUDA_GRAPHS
  if (graphs_) {
    const c10::cuda::CUDAGuard device_guard(device);  // replay and capture on this device
    auto& slot = graphs_->by_shape[{rows, keys}];
    if (!slot) {
      auto captured = std::make_unique<Graphs::Captured>();
      captured->embeds = embeds.clone();
      captured->positions = host_positions.to(device);
      // Capture on a side stream after a warm-up there (cuBLAS makes its workspace for a
      // new stream on first use, which a capture must not do). The warm-up does exactly
      // this step's cache writes, so running it is harmless.
      at::cuda::CUDAStream current = at::cuda::getCurrentCUDAStream(device.index());
      at::cuda::CUDAStream side = at::cuda::getStreamFromPool(false, device.index());
      at::cuda::CUDAEvent inputs_ready, captured_done;
      inputs_ready.record(current);
      inputs_ready.block(side);
      {
        c10::cuda::CUDAStreamGuard guard(side);
        decoder_.decode(captured->embeds, captured->positions, cache_, keys);
        captured->graph.capture_begin(graphs_->pool);
        captured->logits = decoder_.decode(captured->embeds, captured->positions, cache_, keys);
        captured->graph.capture_end();
        graphs_->pool = captured->graph.pool();
      }
      captured_done.record(side);
      captured_done.block(current);
      slot = std::move(captured);
    } else {
      slot->embeds.copy_(embeds);
      slot->positions.copy_(host_positions);
    }
    slot->graph.replay();
    return slot->logits;
  }
#endif
  return decoder_.decode(embeds, host_positions.to(device), cache_, keys);
}

}  // namespace llava
