// The LLaMA-family decoder: token embeddings (with image embeddings spliced in), RMSNorm,
// rotary positions, grouped-query attention over the KV cache, SwiGLU MLP, final norm,
// lm_head (tied or not).
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "common/model_config.h"
#include "stages/checkpoint/checkpoint.h"
#include "stages/language/kv_cache.h"

namespace llava {

// q, k and v are one matrix (one matrix product per token instead of three), and so are
// gate and up.
struct LlamaLayer {
  at::Tensor input_norm, qkv_w, qkv_b, o_w, o_b;
  at::Tensor post_norm, gate_up_w, gate_up_b, down_w, down_b;
};

class LlamaDecoder {
 public:
  LlamaDecoder(const LlavaConfig& config, const Checkpoint& checkpoint,
               const at::TensorOptions& options);

  const TextConfig& config() const { return config_; }
  const at::TensorOptions& options() const { return options_; }

  // Prompt embeddings [1, T, H]: token embeddings, with the rows of each run of image
  // tokens replaced by that image's embeddings ([tokens, H] each, in order). Throws
  // RequestError when the counts disagree or an id is outside the vocabulary.
  at::Tensor embed_prompt(const std::vector<int32_t>& ids,
                          const std::vector<at::Tensor>& images) const;
  // ids [B, T] -> [B, T, H]
  at::Tensor embed(const at::Tensor& ids) const;

  // embeds [B, T, H]: row b continues the sequence in cache slot slots[b]. Returns the
  // final-normed hidden states [B, T, H] and advances each slot's length by T.
  at::Tensor forward(const at::Tensor& embeds, KvCache& cache, const std::vector<int>& slots) const;
  // hidden [..., H] -> float32 logits [..., V]
  at::Tensor logits(const at::Tensor& hidden) const;

 private:
  at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight) const;

  TextConfig config_;
  int64_t image_token_;
  at::TensorOptions options_;
  at::Tensor embed_tokens_, final_norm_, lm_head_;
  at::Tensor rope_cos_, rope_sin_;  // [max_position_embeddings, D] in the compute dtype
  std::vector<LlamaLayer> layers_;
};

}  // namespace llava
