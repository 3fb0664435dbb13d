// LLaMA forward over a slotted KV cache, computed as transformers' LlamaModel does
// (RMSNorm in float32, RoPE tables in float32, softmax in float32).
#include "stages/language/llama_decoder.h"

#include <cmath>
#include <string>

#include "common/errors.h"
#include "stages/attention.h"

namespace llava {

LlamaDecoder::LlamaDecoder(const LlavaConfig& config, const Checkpoint& ckpt,
                           const at::TensorOptions& options)
    : config_(config.text), image_token_(config.image_token_index), options_(options) {
  const TextConfig& t = config_;
  const int64_t h = t.hidden_size, i = t.intermediate_size;
  const int64_t q = t.num_attention_heads * t.head_dim, kv = t.num_key_value_heads * t.head_dim;
  embed_tokens_ = ckpt.load("language.embed_tokens.weight", {t.vocab_size, h}, options);
  final_norm_ = ckpt.load("language.norm.weight", {h}, options);
  if (ckpt.has("lm_head.weight") || !t.tie_word_embeddings) {
    lm_head_ = ckpt.load("lm_head.weight", {t.vocab_size, h}, options);
  } else {
    lm_head_ = embed_tokens_;  // tied: one tensor serves both
  }
  for (int64_t n = 0; n < t.num_hidden_layers; ++n) {
    const std::string prefix = "language.layers." + std::to_string(n) + ".";
    auto load = [&](const std::string& name, std::vector<int64_t> shape) {
      return ckpt.load(prefix + name, shape, options);
    };
    LlamaLayer l;
    l.input_norm = load("input_layernorm.weight", {h});
    l.q_w = load("self_attn.q_proj.weight", {q, h});
    l.k_w = load("self_attn.k_proj.weight", {kv, h});
    l.v_w = load("self_attn.v_proj.weight", {kv, h});
    l.o_w = load("self_attn.o_proj.weight", {h, q});
    if (t.attention_bias) {
      l.q_b = load("self_attn.q_proj.bias", {q});
      l.k_b = load("self_attn.k_proj.bias", {kv});
      l.v_b = load("self_attn.v_proj.bias", {kv});
      l.o_b = load("self_attn.o_proj.bias", {h});
    }
    l.post_norm = load("post_attention_layernorm.weight", {h});
    l.gate_w = load("mlp.gate_proj.weight", {i, h});
    l.up_w = load("mlp.up_proj.weight", {i, h});
    l.down_w = load("mlp.down_proj.weight", {h, i});
    if (t.mlp_bias) {
      l.gate_b = load("mlp.gate_proj.bias", {i});
      l.up_b = load("mlp.up_proj.bias", {i});
      l.down_b = load("mlp.down_proj.bias", {h});
    }
    layers_.push_back(std::move(l));
  }
  // inv_freq = 1 / theta^(2j / D) in float32, as transformers computes it; linear scaling
  // divides it by the factor (positions / factor).
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(options.device());
  at::Tensor exponent = at::arange(0, t.head_dim, 2, f32) / static_cast<double>(t.head_dim);
  inv_freq_ = 1.0 / at::pow(t.rope_theta, exponent);
  if (t.rope_type == "linear") inv_freq_ = inv_freq_ / t.rope_factor;
}

at::Tensor LlamaDecoder::rms_norm(const at::Tensor& x, const at::Tensor& weight) const {
  at::Tensor x32 = x.to(at::kFloat);
  at::Tensor variance = x32.pow(2).mean(-1, /*keepdim=*/true);
  return weight * (x32 * at::rsqrt(variance + config_.rms_norm_eps)).to(x.scalar_type());
}

at::Tensor LlamaDecoder::embed(const at::Tensor& ids) const {
  return at::embedding(embed_tokens_, ids);
}

at::Tensor LlamaDecoder::embed_prompt(const std::vector<int32_t>& ids,
                                      const std::vector<at::Tensor>& images) const {
  std::vector<int64_t> lookup(ids.size()), image_positions;
  for (size_t p = 0; p < ids.size(); ++p) {
    if (ids[p] == image_token_) {
      image_positions.push_back(static_cast<int64_t>(p));
      lookup[p] = 0;  // replaced below; the image token may lie outside the table
    } else if (ids[p] < 0 || ids[p] >= config_.vocab_size) {
      throw RequestError("token id " + std::to_string(ids[p]) + " at position " +
                         std::to_string(p) + " is outside the vocabulary of " +
                         std::to_string(config_.vocab_size));
    } else {
      lookup[p] = ids[p];
    }
  }
  int64_t image_rows = 0;
  for (const auto& image : images) {
    if (image.dim() != 2 || image.size(1) != config_.hidden_size) {
      throw RequestError("image embeddings must be [tokens, " +
                         std::to_string(config_.hidden_size) + "]");
    }
    image_rows += image.size(0);
  }
  if (image_rows != static_cast<int64_t>(image_positions.size())) {
    throw RequestError("the prompt has " + std::to_string(image_positions.size()) +
                       " image tokens but the images give " + std::to_string(image_rows) +
                       " embeddings");
  }
  auto long_options = at::TensorOptions().dtype(at::kLong);
  at::Tensor x = embed(at::tensor(lookup, long_options).to(options_.device())).unsqueeze(0);
  if (!images.empty()) {
    at::Tensor rows = at::cat(images, 0).to(options_);
    x[0].index_copy_(0, at::tensor(image_positions, long_options).to(options_.device()), rows);
  }
  return x;  // [1, T, H]
}

at::Tensor LlamaDecoder::forward(const at::Tensor& embeds, KvCache& cache,
                                 const std::vector<int>& slots) const {
  const TextConfig& t = config_;
  const int64_t b = embeds.size(0), n = embeds.size(1);
  const int64_t heads = t.num_attention_heads, kv_heads = t.num_key_value_heads, d = t.head_dim;
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(options_.device());

  std::vector<int64_t> starts;
  int64_t keys = 0;
  bool same_start = true;
  for (int slot : slots) {
    starts.push_back(cache.length(slot));
    keys = std::max(keys, starts.back() + n);
    same_start = same_start && starts.back() == starts.front();
  }
  at::Tensor start = at::tensor(starts, at::TensorOptions().dtype(at::kLong)).to(f32);  // [B]
  at::Tensor positions = start.unsqueeze(1) + at::arange(n, f32).unsqueeze(0);        // [B, T]

  // RoPE tables [B, 1, T, D], in float32 then the compute dtype.
  at::Tensor freqs = positions.unsqueeze(-1) * inv_freq_.view({1, 1, -1});  // [B, T, D/2]
  at::Tensor angles = at::cat({freqs, freqs}, -1).unsqueeze(1);
  at::Tensor cos = angles.cos().to(embeds.scalar_type());
  at::Tensor sin = angles.sin().to(embeds.scalar_type());
  auto rope = [&](const at::Tensor& x) {
    at::Tensor rotated = at::cat({-x.narrow(-1, d / 2, d / 2), x.narrow(-1, 0, d / 2)}, -1);
    return x * cos + rotated * sin;
  };

  // Key j is visible to query i of row b iff j <= start_b + i. A single new token per
  // row with equal starts sees every cached key: no mask needed. A fresh prompt (every
  // start 0) is plain causal attention: the flash kernel, as transformers uses.
  const bool fresh = same_start && starts.front() == 0 && n > 1;
  at::Tensor mask;
  if (!fresh && (n > 1 || !same_start)) {
    at::Tensor limit = positions.view({b, 1, n, 1});
    at::Tensor key = at::arange(keys, f32).view({1, 1, 1, keys});
    mask = at::where(key <= limit, at::zeros({}, f32), at::full({}, -INFINITY, f32));
  }

  at::Tensor x = embeds;  // [B, T, H]
  for (size_t layer = 0; layer < layers_.size(); ++layer) {
    const LlamaLayer& l = layers_[layer];
    at::Tensor h = rms_norm(x, l.input_norm);
    at::Tensor q = at::linear(h, l.q_w, l.q_b).view({b, n, heads, d}).transpose(1, 2);
    at::Tensor k = at::linear(h, l.k_w, l.k_b).view({b, n, kv_heads, d}).transpose(1, 2);
    at::Tensor v = at::linear(h, l.v_w, l.v_b).view({b, n, kv_heads, d}).transpose(1, 2);
    q = rope(q);  // [B, heads, T, D]
    k = rope(k);  // [B, kv_heads, T, D]
    cache.write(static_cast<int>(layer), slots, k, v);
    auto [all_k, all_v] = cache.read(static_cast<int>(layer), slots, keys);  // [B, kv, L, D]
    if (heads != kv_heads) {
      all_k = all_k.repeat_interleave(heads / kv_heads, 1);
      all_v = all_v.repeat_interleave(heads / kv_heads, 1);
    }
    at::Tensor a =
        attention(q, all_k, all_v, mask, 1.0 / std::sqrt(static_cast<double>(d)), fresh);
    x = x + at::linear(a.transpose(1, 2).reshape({b, n, heads * d}), l.o_w, l.o_b);
    h = rms_norm(x, l.post_norm);
    at::Tensor gated = at::silu(at::linear(h, l.gate_w, l.gate_b)) * at::linear(h, l.up_w, l.up_b);
    x = x + at::linear(gated, l.down_w, l.down_b);
  }
  for (size_t row = 0; row < slots.size(); ++row) cache.set_length(slots[row], starts[row] + n);
  return rms_norm(x, final_norm_);
}

at::Tensor LlamaDecoder::logits(const at::Tensor& hidden) const {
  return at::linear(hidden, lm_head_).to(at::kFloat);
}

}  // namespace llava
