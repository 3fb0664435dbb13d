// The KV cache: allocated once, as `slots` sequences of up to `max_tokens` each, per layer
// [slots, kv_heads, max_tokens, head_dim]. Sequences take a slot and give it back; nothing
// is reallocated per token.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "common/model_config.h"

namespace llava {

class KvCache {
 public:
  KvCache(const TextConfig& config, int64_t slots, int64_t max_tokens,
          const at::TensorOptions& options);

  int64_t slots() const { return static_cast<int64_t>(lengths_.size()); }
  int64_t max_tokens() const { return max_tokens_; }
  int64_t bytes() const;

  int acquire();  // a free slot, or -1 when all are taken
  void release(int slot);
  int free_slots() const;
  int64_t length(int slot) const { return lengths_[static_cast<size_t>(slot)]; }
  void set_length(int slot, int64_t length);

  // Slot `to` takes slot `from`'s first `tokens` keys and values (every layer) and that
  // length: a prompt another sequence has already run.
  void copy_prefix(int from, int to, int64_t tokens);
  // Throws RequestError unless every slot has room for `tokens` more.
  void check_room(const std::vector<int>& slots, int64_t tokens) const;
  // Stores k/v [B, kv_heads, T, D] of rows b at positions length(slots[b]) + [0, T).
  void write(int layer, const std::vector<int>& slots, const at::Tensor& k, const at::Tensor& v);
  // Keys and values of `slots` up to `tokens`: [B, kv_heads, tokens, D] (a view for B = 1).
  std::pair<at::Tensor, at::Tensor> read(int layer, const std::vector<int>& slots,
                                         int64_t tokens) const;

  // The decode step's access (static shapes, device indices; see LlamaDecoder::decode):
  // rows of k/v [R, kv_heads, 1, D] go to the flat positions `index` [R * kv_heads] of
  // the layer seen as [slots * kv_heads * max_tokens, D]; and slots [0, rows) up to
  // `tokens`, as views: [rows, kv_heads, tokens, D].
  void write_rows(int layer, const at::Tensor& index, const at::Tensor& k, const at::Tensor& v);
  std::pair<at::Tensor, at::Tensor> rows(int layer, int64_t rows, int64_t tokens) const;
  // One layer's whole keys and values [slots, kv_heads, max_tokens, D] (our kernels'
  // decode step writes and reads them in place).
  std::pair<at::Tensor, at::Tensor> layer(int layer) const {
    return {k_[static_cast<size_t>(layer)], v_[static_cast<size_t>(layer)]};
  }

 private:
  int64_t max_tokens_;
  std::vector<at::Tensor> k_, v_;  // per layer
  std::vector<int64_t> lengths_;
  std::vector<bool> used_;
};

}  // namespace llava
