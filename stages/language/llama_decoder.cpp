// LLaMA forward over a slotted KV cache, computed as transformers' LlamaModel does
// (RMSNorm in float32, RoPE tables in float32, softmax in float32).
#include "stages/language/llama_decoder.h"

#include <cmath>
#include <string>

#include "common/errors.h"
#include "stages/attention.h"

#ifdef LLAVA_PIPE_CUDA_KERNELS
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "stages/language/fused_kernels.h"
#endif

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
#ifdef LLAVA_PIPE_CUDA_KERNELS
  const auto dtype = options_.dtype().toScalarType();
  return fused_ && options_.device().is_cuda() && (dtype == at::kHalf || dtype == at::kBFloat16);
#else
  return false;
#endif
}

#ifdef LLAVA_PIPE_CUDA_KERNELS
namespace {
bool bf16(const at::Tensor& x) { return x.scalar_type() == at::kBFloat16; }
void* stream() { return at::cuda::getCurrentCUDAStream().stream(); }
}  // namespace
#endif

std::pair<at::Tensor, at::Tensor> LlamaDecoder::add_rms_norm(const at::Tensor& x, const at::Tensor& delta,
                                                              const at::Tensor& weight) const {
#ifdef LLAVA_PIPE_CUDA_KERNELS
  if (kernels()) {
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor in = x.contiguous(), add = delta.defined() ? delta.contiguous() : at::Tensor();
    at::Tensor sum = add.defined() ? at::empty_like(in) : in, y = at::empty_like(in);
    const int h = static_cast<int>(in.size(-1));
    cuda::rms_norm(in.data_ptr(), add.defined() ? add.data_ptr() : nullptr, add.defined() ? sum.data_ptr() : nullptr,
                   weight.data_ptr(), y.data_ptr(), static_cast<int>(in.numel() / h), h,
                   static_cast<float>(config_.rms_norm_eps), bf16(in), stream());
    return {sum, y};
  }
#endif
  at::Tensor sum = delta.defined() ? x + delta : x;
  at::Tensor x32 = sum.to(at::kFloat);
  at::Tensor variance = x32.pow(2).mean(-1, /*keepdim=*/true);
  return {sum, weight * (x32 * at::rsqrt(variance + config_.rms_norm_eps)).to(x.scalar_type())};
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
    const CacheRows rows{&cache, layer, &slots, slot_table};
    const at::Tensor q = rotated_heads(projected, positions, &rows)[0];  // k and v: in the cache
    auto [all_k, all_v] = cache.read(layer, slots, read);                // [B, kv, L, D]
    return attend(q, all_k, all_v, mask, fresh);
  });
  for (size_t row = 0; row < slots.size(); ++row) cache.set_length(slots[row], starts[row] + n);
  return x;
}

at::Tensor LlamaDecoder::decode(const at::Tensor& embeds, const at::Tensor& positions,
                                KvCache& cache, int64_t keys) const {
  const int64_t rows = embeds.size(0), kv_heads = config_.num_key_value_heads;
#ifdef LLAVA_PIPE_CUDA_KERNELS
  // Our decode attention reads each row's keys from the cache in place (no mask, no
  // copies); the RoPE kernel writes the new k/v there.
  if (kernels() && cuda::decode_attention_supports(static_cast<int>(config_.head_dim), keys)) {
    // The kernel's per-(row, head) counters: zero here, reset by each layer's launch. This
    // plain launch also ends every earlier write to the cache before the step's kernels
    // start (the attention reads older rows early: fused_kernels.h).
    at::Tensor counters = at::zeros({rows * config_.num_attention_heads}, positions.options().dtype(at::kInt));
    return logits(layers(embeds, [&](int layer, const at::Tensor& projected) {
                    return attend_cached(layer, projected, positions, counters, cache, keys);
                  })).view({rows, -1});
  }
#endif
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
    auto [q, k, v] = rotated_heads(projected, positions.view({rows, 1}));
    cache.write_rows(layer, index, k, v);
    auto [all_k, all_v] = cache.rows(layer, rows, keys);  // views [R, kv, keys, D]
    return attend(q, all_k, all_v, mask, false);
  });
  return logits(x).view({rows, -1});
}

std::array<at::Tensor, 3> LlamaDecoder::rotated_heads(const at::Tensor& projected, const at::Tensor& positions,
                                                      const CacheRows* store) const {
  const int64_t b = projected.size(0), n = projected.size(1);
  const int64_t heads = config_.num_attention_heads, kv_heads = config_.num_key_value_heads, d = config_.head_dim;
  const bool fuse = kernels() && projected.is_contiguous();
#ifdef LLAVA_PIPE_CUDA_KERNELS
  if (fuse) {  // q and k rotated in place
    const c10::cuda::CUDAGuard guard(projected.device());
    const at::Tensor at_positions = positions.contiguous();
    cuda::KvLayer cache_layer{};
    if (store != nullptr) {
      auto [k_layer, v_layer] = store->cache->layer(store->layer);
      cache_layer = {k_layer.data_ptr(), v_layer.data_ptr(), store->cache->max_tokens(),
                     store->slot_table.defined() ? store->slot_table.data_ptr<int64_t>() : nullptr,
                     store->slots->front(), static_cast<int>(n)};
    }
    cuda::rope(projected.data_ptr(), rope_cos_.data_ptr(), rope_sin_.data_ptr(), at_positions.data_ptr<int64_t>(),
               static_cast<int>(b * n), static_cast<int>(projected.size(-1)), static_cast<int>(heads),
               static_cast<int>(kv_heads), static_cast<int>(d), store != nullptr ? &cache_layer : nullptr,
               bf16(projected), stream());
  }
#endif
  auto qkv = projected.split_with_sizes({heads * d, kv_heads * d, kv_heads * d}, -1);
  at::Tensor q = qkv[0].view({b, n, heads, d}).transpose(1, 2);     // [B, heads, T, D]
  at::Tensor k = qkv[1].view({b, n, kv_heads, d}).transpose(1, 2);  // [B, kv_heads, T, D]
  at::Tensor v = qkv[2].view({b, n, kv_heads, d}).transpose(1, 2);
  if (!fuse) {
    // RoPE rows of these positions [B, 1, T, D]: x * cos + rotate_half(x) * sin.
    at::Tensor cos = rope_cos_.index_select(0, positions.flatten()).view({b, 1, n, d});
    at::Tensor sin = rope_sin_.index_select(0, positions.flatten()).view({b, 1, n, d});
    auto rope = [&](const at::Tensor& x) {
      at::Tensor rotated = at::cat({-x.narrow(-1, d / 2, d / 2), x.narrow(-1, 0, d / 2)}, -1);
      return x * cos + rotated * sin;
    };
    q = rope(q);
    k = rope(k);
    if (store != nullptr) store->cache->write(store->layer, *store->slots, k, v);
  }
  return {q, k, v};
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

#ifdef LLAVA_PIPE_CUDA_KERNELS
at::Tensor LlamaDecoder::attend_cached(int layer, const at::Tensor& projected, const at::Tensor& positions,
                                       const at::Tensor& counters, KvCache& cache, int64_t keys) const {
  const int64_t rows = projected.size(0);
  const int heads = static_cast<int>(config_.num_attention_heads), kv_heads = static_cast<int>(config_.num_key_value_heads),
            d = static_cast<int>(config_.head_dim), stride = static_cast<int>(projected.size(-1));
  const c10::cuda::CUDAGuard guard(projected.device());
  auto [k, v] = cache.layer(layer);
  const cuda::KvLayer store{k.data_ptr(), v.data_ptr(), cache.max_tokens()};
  const int64_t* at_positions = positions.data_ptr<int64_t>();
  cuda::rope(projected.data_ptr(), rope_cos_.data_ptr(), rope_sin_.data_ptr(), at_positions, static_cast<int>(rows),
             stride, heads, kv_heads, d, &store, bf16(projected), stream());
  at::Tensor work = at::empty({cuda::decode_attention_work_floats(static_cast<int>(rows), heads, d, static_cast<int>(keys))},
                              projected.options().dtype(at::kFloat));
  at::Tensor out = at::empty({rows, 1, static_cast<int64_t>(heads) * d}, projected.options());
  const bool taken = cuda::decode_attention(projected.data_ptr(), stride, store, at_positions, static_cast<int>(rows), heads,
                                            kv_heads, d, static_cast<int>(keys), 1.0f / std::sqrt(static_cast<float>(d)),
                                            work.data_ptr<float>(), counters.data_ptr<int>(), out.data_ptr(),
                                            bf16(projected), stream());
  if (!taken) {  // decode() checked decode_attention_supports
    throw std::logic_error("decode attention does not take head size " + std::to_string(d) + " with " +
                           std::to_string(keys) + " keys");
  }
  return out;
}
#endif

at::Tensor LlamaDecoder::layers(const at::Tensor& embeds, const Attend& attend_layer) const {
  at::Tensor x = embeds;  // the residual stream [B, T, H]
  at::Tensor delta;       // the last sublayer's output, not yet added to x
  auto add_norm = [&](const at::Tensor& weight) {
    at::Tensor h;
    std::tie(x, h) = add_rms_norm(x, delta, weight);
    return h;
  };
  // down(silu(gate) * up) of the post-norm rows h, the gating inside the gate/up product
  // where our quantized GEMM takes it (decoding: Linear::gated).
  auto mlp = [&](const LlamaLayer& l, const at::Tensor& h) {
    at::Tensor gated = kernels() ? l.gate_up.gated(h) : at::Tensor();
    return l.down(gated.defined() ? gated : gate(l.gate_up(h)));
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

at::Tensor LlamaDecoder::gate(const at::Tensor& gate_up) const {
#ifdef LLAVA_PIPE_CUDA_KERNELS
  if (kernels() && gate_up.is_contiguous()) {
    const c10::cuda::CUDAGuard guard(gate_up.device());
    std::vector<int64_t> shape = gate_up.sizes().vec();
    shape.back() /= 2;
    at::Tensor out = at::empty(shape, gate_up.options());
    const int n = static_cast<int>(shape.back());
    cuda::silu_mul(gate_up.data_ptr(), out.data_ptr(), static_cast<int>(out.numel() / n), n, bf16(gate_up), stream());
    return out;
  }
#endif
  auto parts = gate_up.chunk(2, -1);
  return at::silu(parts[0]) * parts[1];
}

at::Tensor LlamaDecoder::logits(const at::Tensor& hidden) const {
  return lm_head_(hidden).to(at::kFloat);
}

}  // namespace llava
