// LLaMA forward over a slotted KV cache, computed as transformers' LlamaModel does
// (RMSNorm in float32, RoPE tables in float32, softmax in float32).
#include "stages/language/llama_decoder.h"

#include <cmath>
#include <string>

#include "common/errors.h"
#include "stages/attention.h"
#include "stages/language/llama_ops.h"

namespace llava {

LlamaDecoder::LlamaDecoder(const LlavaConfig& config, const Checkpoint& ckpt,
                           const at::TensorOptions& options, const WeightPlacement& placement)
    : config_(config.text),
      image_token_(config.image_token_index),
      options_(options),
      embeddings_on_host_(placement.embeddings_on_host) {
  const TextConfig& t = config_;
  const int64_t h = t.hidden_size, i = t.intermediate_size;
  const int64_t q = t.num_attention_heads * t.head_dim, kv = t.num_key_value_heads * t.head_dim;
  const Quantize qz = placement.quantize;
  const at::Device host(at::kCPU);
  embed_tokens_ = ckpt.load("language.embed_tokens.weight", {t.vocab_size, h},
                            placement.embeddings_on_host ? options.device(host) : options);
  final_norm_ = ckpt.load("language.norm.weight", {h}, options);
  if (ckpt.has("lm_head.weight") || !t.tie_word_embeddings) {
    lm_head_ = Linear({ckpt.load("lm_head.weight", {t.vocab_size, h}, options)}, {},
                      qz == Quantize::kNone ? Quantize::kNone : Quantize::kInt8);
  } else {
    lm_head_ = Linear({embed_tokens_.to(options)}, {}, Quantize::kNone);  // tied: one tensor
  }
  // Streamed layers are built on the device (quantized there) and then moved to host
  // memory, pinned so that the copies back run asynchronously.
  const int resident = placement.resident_layers < 0 ? static_cast<int>(t.num_hidden_layers)
                                                     : placement.resident_layers;
  auto to_host = [&](const at::Tensor& x) {
    return at::empty(x.sizes(), x.options().device(host).pinned_memory(options.device().is_cuda()))
        .copy_(x);
  };
  std::vector<LlamaLayer> streamed;
  for (int64_t n = 0; n < t.num_hidden_layers; ++n) {
    const std::string prefix = "language.layers." + std::to_string(n) + ".";
    auto load = [&](const std::string& name, std::vector<int64_t> shape) {
      return ckpt.load(prefix + name, shape, options);
    };
    auto maybe = [&](bool present, const std::string& name, int64_t size) {
      return present ? load(name, {size}) : at::Tensor();
    };
    LlamaLayer l;
    l.input_norm = load("input_layernorm.weight", {h});
    l.post_norm = load("post_attention_layernorm.weight", {h});
    const bool ab = t.attention_bias, mb = t.mlp_bias;
    l.qkv = Linear({load("self_attn.q_proj.weight", {q, h}), load("self_attn.k_proj.weight", {kv, h}),
                    load("self_attn.v_proj.weight", {kv, h})},
                   {maybe(ab, "self_attn.q_proj.bias", q), maybe(ab, "self_attn.k_proj.bias", kv),
                    maybe(ab, "self_attn.v_proj.bias", kv)},
                   qz);
    l.o = Linear({load("self_attn.o_proj.weight", {h, q})}, {maybe(ab, "self_attn.o_proj.bias", h)}, qz);
    l.gate_up = Linear({load("mlp.gate_proj.weight", {i, h}), load("mlp.up_proj.weight", {i, h})},
                       {maybe(mb, "mlp.gate_proj.bias", i), maybe(mb, "mlp.up_proj.bias", i)}, qz);
    l.down = Linear({load("mlp.down_proj.weight", {h, i})}, {maybe(mb, "mlp.down_proj.bias", h)}, qz);
    layer_bytes_ = l.bytes();
    if (n < resident) {
      layers_.push_back(std::move(l));
    } else {
      streamed.push_back(l.map(to_host));
    }
  }
  if (!streamed.empty()) streamed_ = std::make_unique<LayerStream>(std::move(streamed), options.device());
  // RoPE tables for every position, computed as transformers computes them per call:
  // inv_freq = 1 / theta^(2j / D) in float32 (divided by the factor for linear scaling),
  // angle = position * inv_freq in float32, cos/sin, then the compute dtype.
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(options.device());
  at::Tensor exponent = at::arange(0, t.head_dim, 2, f32) / static_cast<double>(t.head_dim);
  at::Tensor inv_freq = 1.0 / at::pow(t.rope_theta, exponent);
  if (t.rope_type == "linear") inv_freq = inv_freq / t.rope_factor;
  at::Tensor freqs = at::arange(t.max_position_embeddings, f32).unsqueeze(1) * inv_freq.unsqueeze(0);
  at::Tensor angles = at::cat({freqs, freqs}, -1);  // [P, D]
  rope_cos_ = angles.cos().to(options.dtype());
  rope_sin_ = angles.sin().to(options.dtype());
}

bool LlamaDecoder::kernels() const {
  return fused_ && ops::kernels_take(options_);
}

ops::Heads LlamaDecoder::heads() const {
  return {config_.num_attention_heads, config_.num_key_value_heads, config_.head_dim, rope_cos_,
          rope_sin_};
}

at::Tensor LlamaDecoder::embed(const at::Tensor& ids) const {
  // The table may be in host memory: look up there, send the rows.
  return at::embedding(embed_tokens_, ids.to(embed_tokens_.device())).to(options_.device());
}

void LlamaDecoder::visit_tensors(const std::function<void(at::Tensor&)>& f) {
  f(embed_tokens_);
  f(final_norm_);
  lm_head_.visit(f);
  f(rope_cos_);
  f(rope_sin_);
  for (auto& layer : layers_) layer.visit(f);
  if (streamed_) streamed_->visit_buffers(f);
}

int64_t LlamaDecoder::device_weight_bytes() const {
  int64_t total = static_cast<int64_t>(final_norm_.nbytes()) + lm_head_.bytes() +
                  (streamed_ ? streamed_->device_bytes() : 0);
  for (const auto& l : layers_) total += l.bytes();
  // A tied output layer is the embedding table itself.
  if (!embeddings_on_host_ && !config_.tie_word_embeddings) {
    total += static_cast<int64_t>(embed_tokens_.nbytes());
  }
  return total;
}

int64_t LlamaDecoder::host_weight_bytes() const {
  return (streamed_ ? streamed_->host_bytes() : 0) +
         (embeddings_on_host_ ? static_cast<int64_t>(embed_tokens_.nbytes()) : 0);
}

at::Tensor LlamaDecoder::embed_prompt(const std::vector<int32_t>& ids, const std::vector<at::Tensor>& images,
                                      size_t placeholders_end) const {
  std::vector<int64_t> lookup(ids.size()), image_positions;
  for (size_t p = 0; p < ids.size(); ++p) {
    if (ids[p] == image_token_ && p < placeholders_end) {
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
  at::Tensor x = embed(at::tensor(lookup, long_options)).unsqueeze(0);
  if (!images.empty()) {
    // Each image straight into its rows on the device (a host-side cat would copy them once more).
    at::Tensor rows = at::empty({image_rows, config_.hidden_size}, options_);
    int64_t row = 0;
    for (const auto& image : images) {
      rows.narrow(0, row, image.size(0)).copy_(image);
      row += image.size(0);
    }
    if (!at::isfinite(rows).all().item<bool>()) {
      throw RequestError("the image embeddings contain NaN or Inf");
    }
    x[0].index_copy_(0, at::tensor(image_positions, long_options).to(options_.device()), rows);
  }
  return x;  // [1, T, H]
}

at::Tensor LlamaDecoder::forward(const at::Tensor& embeds, KvCache& cache,
                                 const std::vector<int>& slots) const {
  const TextConfig& t = config_;
  const int64_t b = embeds.size(0), n = embeds.size(1);
  auto f32 = at::TensorOptions().dtype(at::kFloat).device(options_.device());

  std::vector<int64_t> starts;
  int64_t keys = 0;
  bool same_start = true;
  for (int slot : slots) {
    starts.push_back(cache.length(slot));
    keys = std::max(keys, starts.back() + n);
    same_start = same_start && starts.back() == starts.front();
  }
  if (keys > t.max_position_embeddings) {
    throw RequestError("position " + std::to_string(keys) + " is past the model's " +
                       std::to_string(t.max_position_embeddings) + " positions");
  }
  auto i64 = at::TensorOptions().dtype(at::kLong).device(options_.device());
  at::Tensor positions;  // [B, T]
  if (b == 1) {
    positions = at::arange(starts[0], starts[0] + n, i64).unsqueeze(0);
  } else {
    std::vector<int64_t> all;
    for (int64_t start : starts) {
      for (int64_t i = 0; i < n; ++i) all.push_back(start + i);
    }
    positions = at::tensor(all, at::kLong).to(options_.device(), /*non_blocking=*/true).view({b, n});
  }
  // Key j is visible to query i of row b iff j <= start_b + i. A single new token per
  // row with equal starts sees every cached key: no mask needed. A fresh prompt (every
  // start 0) is plain causal attention: the flash kernel, as transformers uses.
  const bool fresh = same_start && starts.front() == 0 && n > 1;
  at::Tensor mask;
  if (!fresh && (n > 1 || !same_start)) {
    at::Tensor limit = positions.to(at::kFloat).view({b, 1, n, 1});
    at::Tensor key = at::arange(keys, f32).view({1, 1, 1, keys});
    mask = at::where(key <= limit, at::zeros({}, f32), at::full({}, -INFINITY, f32));
  }
  // The keys and values go into the cache with RoPE (our kernel writes them as it rotates
  // them, which spares two strided copies a layer).
  cache.check_room(slots, n);
  at::Tensor slot_table;
  if (b > 1 && kernels()) {
    slot_table = at::tensor(std::vector<int64_t>(slots.begin(), slots.end()), at::kLong).to(options_.device());
  }
  // A fresh prompt's keys are read to a few lengths past it (cuDNN's attention, a plan per
  // length: attention.h); the rows past the prompt are never attended.
  const int64_t read =
      fresh ? causal_attention_length(n, cache.max_tokens(), options_, t.head_dim) : keys;
  at::Tensor x = layers(embeds, [&](int layer, const at::Tensor& projected) {
    const ops::CacheRows rows{&cache, layer, &slots, slot_table};
    const at::Tensor q =
        ops::rotated_heads(projected, positions, heads(), &rows, kernels())[0];  // k, v: cached
    if (fresh && kernels()) {  // the flash kernel's numbers in less time, where ours takes it
      at::Tensor ours = ops::prefill_attention(q, rows, heads());
      if (ours.defined()) return ours;
    }
    auto [all_k, all_v] = cache.read(layer, slots, read);                // [B, kv, L, D]
    return attend(q, all_k, all_v, mask, fresh);
  });
  for (size_t row = 0; row < slots.size(); ++row) cache.set_length(slots[row], starts[row] + n);
  return x;
}

at::Tensor LlamaDecoder::decode(const at::Tensor& embeds, const at::Tensor& positions,
                                KvCache& cache, int64_t keys) const {
  const int64_t rows = embeds.size(0), kv_heads = config_.num_key_value_heads;
  // Our decode attention reads each row's keys from the cache in place (no mask, no
  // copies); the RoPE kernel writes the new k/v there.
  if (ops::decode_attention_takes(config_.head_dim, keys, kernels())) {
    // The kernel's per-(row, head) counters: zero here, reset by each layer's launch. This
    // plain launch also ends every earlier write to the cache before the step's kernels
    // start (the attention reads older rows early: fused_kernels.h).
    at::Tensor counters = at::zeros({rows * config_.num_attention_heads}, positions.options().dtype(at::kInt));
    return logits(layers(embeds,
                         [&](int layer, const at::Tensor& projected) {
                           return ops::decode_attention(layer, projected, positions, counters,
                                                        cache, keys, heads());
                         }))
        .view({rows, -1});
  }
  auto i64 = positions.options();
  // Row r sees keys j <= positions[r]; the rest of the bucket is masked.
  at::Tensor visible = at::arange(keys, i64).view({1, 1, 1, keys}) <= positions.view({rows, 1, 1, 1});
  at::Tensor mask = at::zeros({rows, 1, 1, keys}, options_).masked_fill_(visible.logical_not(), -INFINITY);
  // Where this step's k/v go in the layer seen as [slots * kv_heads * max_tokens, D].
  at::Tensor index = ((at::arange(rows, i64).view({rows, 1}) * kv_heads + at::arange(kv_heads, i64).view({1, kv_heads})) *
                          cache.max_tokens() +
                      positions.view({rows, 1}))
                         .flatten();
  at::Tensor x = layers(embeds, [&](int layer, const at::Tensor& projected) {
    auto [q, k, v] =
        ops::rotated_heads(projected, positions.view({rows, 1}), heads(), nullptr, kernels());
    cache.write_rows(layer, index, k, v);
    auto [all_k, all_v] = cache.rows(layer, rows, keys);  // views [R, kv, keys, D]
    return attend(q, all_k, all_v, mask, false);
  });
  return logits(x).view({rows, -1});
}

at::Tensor LlamaDecoder::attend(const at::Tensor& q, at::Tensor k, at::Tensor v, const at::Tensor& mask,
                                bool causal) const {
  const int64_t b = q.size(0), heads = q.size(1), n = q.size(2), d = q.size(3);
  if (heads != k.size(1)) {
    k = k.repeat_interleave(heads / k.size(1), 1);
    v = v.repeat_interleave(heads / v.size(1), 1);
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  at::Tensor a = causal ? causal_attention(q, k, v, scale) : attention(q, k, v, mask, scale);
  return a.transpose(1, 2).reshape({b, n, heads * d});
}

at::Tensor LlamaDecoder::layers(const at::Tensor& embeds, const Attend& attend_layer) const {
  at::Tensor x = embeds;  // the residual stream [B, T, H]
  at::Tensor delta;       // the last sublayer's output, not yet added to x
  auto add_norm = [&](const at::Tensor& weight) {
    at::Tensor h;
    std::tie(x, h) = ops::add_rms_norm(x, delta, weight, config_.rms_norm_eps, kernels());
    return h;
  };
  // down(silu(gate) * up) of the post-norm rows h, the gating inside the gate/up product
  // where our quantized GEMM takes it (decoding: Linear::gated).
  auto mlp = [&](const LlamaLayer& l, const at::Tensor& h) {
    at::Tensor gated = kernels() ? l.gate_up.gated(h) : at::Tensor();
    return l.down(gated.defined() ? gated : ops::silu_mul(l.gate_up(h), kernels()));
  };
  const size_t resident = layers_.size(), total = resident + (streamed_ ? streamed_->size() : 0);
  if (streamed_) streamed_->begin();
  for (size_t layer = 0; layer < total; ++layer) {
    const LlamaLayer& l = layer < resident ? layers_[layer] : streamed_->acquire(layer - resident);
    delta = l.o(attend_layer(static_cast<int>(layer), l.qkv(add_norm(l.input_norm))));
    delta = mlp(l, add_norm(l.post_norm));
    if (layer >= resident) streamed_->release(layer - resident);
  }
  return add_norm(final_norm_);
}

at::Tensor LlamaDecoder::logits(const at::Tensor& hidden) const {
  return lm_head_(hidden).to(at::kFloat);
}

}  // namespace llava
