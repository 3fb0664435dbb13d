// The decode step of continuous batching, with shapes that repeat: rows are cache slots
// [0, R) with R rounded up to a power of two, keys rounded up to a multiple of 256. On
// CUDA each (rows, keys) shape is captured once as a CUDA graph and then replayed: one
// launch per step instead of ~20 per layer, which at batch 1 cost as much time as the
// weights' reads (tests/perf/decode_profile).
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <vector>

#include "stages/graph_cache.h"
#include "stages/language/kv_cache.h"
#include "stages/language/llama_decoder.h"

namespace llava {

class DecodeStep {
 public:
  // Graphs only where LibTorch has CUDA graphs, the device is CUDA and no layer is
  // streamed (streaming orders copies with events across streams).
  DecodeStep(const LlamaDecoder& decoder, KvCache& cache, bool cuda_graphs);

  static int64_t rows_for(int64_t rows, int64_t slots);
  static int64_t keys_for(int64_t keys, int64_t max_tokens);

  // tokens[s] at positions[s] for cache slots s = 0..n-1 (free slots: anything, e.g. 0 at
  // 0); attends up to `keys` keys. Returns float32 logits [rows_for(n), V], valid until
  // the next call.
  at::Tensor run(const std::vector<int64_t>& tokens, const std::vector<int64_t>& positions,
                 int64_t keys);
  size_t graphs() const { return graphs_.size(); }  // captured so far

 private:
  const LlamaDecoder& decoder_;
  KvCache& cache_;
  GraphCache graphs_;  // by (rows, keys)
};

}  // namespace llava
