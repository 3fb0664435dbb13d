// The LLaMA-family decoder: token embeddings (with image embeddings spliced in), RMSNorm,
// rotary positions, grouped-query attention over the KV cache, SwiGLU MLP, final norm,
// lm_head (tied or not).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "common/config.h"
#include "common/model_config.h"
#include "stages/checkpoint/checkpoint.h"
#include "stages/language/kv_cache.h"
#include "stages/language/layer_stream.h"
#include "stages/language/linear.h"
#include "stages/language/llama_layer.h"
#include "stages/language/llama_ops.h"

namespace llava {

// How the weights are stored and where they live (plan.h: language_layout decides).
struct WeightPlacement {
  Quantize quantize = Quantize::kNone;  // the layers' linears; the output layer is int8 if set
  bool embeddings_on_host = false;      // the token table stays in host memory
  int resident_layers = -1;             // layers on the device; the rest streamed (-1: all)
};

class LlamaDecoder {
 public:
  LlamaDecoder(const LlavaConfig& config, const Checkpoint& checkpoint,
               const at::TensorOptions& options, const WeightPlacement& placement = {});

  const TextConfig& config() const { return config_; }
  const at::TensorOptions& options() const { return options_; }

  // Prompt embeddings [1, T, H]: token embeddings, with the rows of each run of image
  // tokens among the first `placeholders_end` ids replaced by that image's embeddings
  // ([tokens, H] each, in order); past it (a resumed request's generated tokens) every id
  // is text. Throws RequestError when the counts disagree or an id is outside the
  // vocabulary.
  at::Tensor embed_prompt(const std::vector<int32_t>& ids, const std::vector<at::Tensor>& images,
                          size_t placeholders_end = SIZE_MAX) const;
  int64_t image_token() const { return image_token_; }
  // ids [B, T] -> [B, T, H]
  at::Tensor embed(const at::Tensor& ids) const;

  // embeds [B, T, H]: row b continues the sequence in cache slot slots[b]. Returns the
  // final-normed hidden states [B, T, H] and advances each slot's length by T.
  at::Tensor forward(const at::Tensor& embeds, KvCache& cache, const std::vector<int>& slots) const;
  // One decode step with static shapes (what a CUDA graph captures): row r of embeds
  // [R, 1, H] is cache slot r, at position positions[r] ([R] long, on the device), and
  // attends keys [0, positions[r]] out of the first `keys`. Writes each row's k/v at its
  // position (rows of unused slots write into their own free slot) and does not change
  // the cache's lengths. Returns float32 logits [R, V].
  at::Tensor decode(const at::Tensor& embeds, const at::Tensor& positions, KvCache& cache,
                    int64_t keys) const;
  bool streams_layers() const { return streamed_ != nullptr; }
  // Our CUDA kernels (residual add + RMSNorm, RoPE, gating, decode attention; the gating
  // inside the quantized GEMM where that takes the rows) where built (default on); off,
  // LibTorch's kernels compose the same math.
  void use_fused_kernels(bool on) { fused_ = on; }

  // hidden [..., H] -> float32 logits [..., V]
  at::Tensor logits(const at::Tensor& hidden) const;

  // f(tensor&) on every tensor the decoder keeps (weights, RoPE tables, streaming
  // buffers), in a fixed order; f may replace one by an equal tensor elsewhere (release:
  // offload moves them to host memory and back).
  void visit_tensors(const std::function<void(at::Tensor&)>& f);
  // Weight bytes on the device (streaming buffers included) and in host memory.
  int64_t device_weight_bytes() const;
  int64_t host_weight_bytes() const;
  int64_t layer_bytes() const { return layer_bytes_; }

 private:
  bool kernels() const;  // our CUDA kernels take this decoder's tensors
  ops::Heads heads() const;  // the attention heads' sizes and the RoPE tables
  // Attention of q over k/v (kv heads repeated for grouped-query), as [B, T, heads * D].
  // `causal` (a fresh prompt): k/v may run past the prompt's T rows (causal_attention).
  at::Tensor attend(const at::Tensor& q, at::Tensor k, at::Tensor v, const at::Tensor& mask,
                    bool causal) const;
  // One layer's attention: qkv rows [B, T, (heads + 2 kv_heads) D] -> [B, T, heads * D],
  // storing the layer's new keys and values.
  using Attend = std::function<at::Tensor(int layer, const at::Tensor& projected)>;
  // Every decoder layer over embeds [B, T, H], then the final norm.
  at::Tensor layers(const at::Tensor& embeds, const Attend& attend_layer) const;

  TextConfig config_;
  int64_t image_token_;
  at::TensorOptions options_;
  bool embeddings_on_host_;
  at::Tensor embed_tokens_, final_norm_;  // the table may be in host memory
  Linear lm_head_;
  at::Tensor rope_cos_, rope_sin_;  // [max_position_embeddings, D] in the compute dtype
  std::vector<LlamaLayer> layers_;  // on the device
  std::unique_ptr<LayerStream> streamed_;  // the layers after layers_, or null
  int64_t layer_bytes_ = 0;
  bool fused_ = true;
};

}  // namespace llava
