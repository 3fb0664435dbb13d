// Slotted KV cache.
#include "stages/language/kv_cache.h"

#include "common/errors.h"

namespace llava {

KvCache::KvCache(const TextConfig& config, int64_t slots, int64_t max_tokens,
                 const at::TensorOptions& options)
    : max_tokens_(max_tokens),
      lengths_(static_cast<size_t>(slots), 0),
      used_(static_cast<size_t>(slots), false) {
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    k_.push_back(at::zeros({slots, config.num_key_value_heads, max_tokens, config.head_dim}, options));
    v_.push_back(at::zeros({slots, config.num_key_value_heads, max_tokens, config.head_dim}, options));
  }
}

int64_t KvCache::bytes() const {
  int64_t total = 0;
  for (const auto& t : k_) total += 2 * t.numel() * static_cast<int64_t>(t.element_size());
  return total;
}

int KvCache::acquire() {
  for (size_t i = 0; i < used_.size(); ++i) {
    if (!used_[i]) {
      used_[i] = true;
      lengths_[i] = 0;
      return static_cast<int>(i);
    }
  }
  return -1;
}

void KvCache::release(int slot) {
  used_[static_cast<size_t>(slot)] = false;
  lengths_[static_cast<size_t>(slot)] = 0;
}

int KvCache::free_slots() const {
  int n = 0;
  for (bool u : used_) n += !u;
  return n;
}

void KvCache::set_length(int slot, int64_t length) {
  if (length > max_tokens_) {
    throw RequestError("sequence of " + std::to_string(length) + " tokens exceeds the context of " +
                       std::to_string(max_tokens_));
  }
  lengths_[static_cast<size_t>(slot)] = length;
}

void KvCache::check_room(const std::vector<int>& slots, int64_t tokens) const {
  for (int slot : slots) {
    if (length(slot) + tokens > max_tokens_) {
      throw RequestError("sequence of " + std::to_string(length(slot) + tokens) +
                         " tokens exceeds the context of " + std::to_string(max_tokens_));
    }
  }
}

void KvCache::write(int layer, const std::vector<int>& slots, const at::Tensor& k,
                    const at::Tensor& v) {
  const int64_t t = k.size(2);
  check_room(slots, t);
  for (size_t b = 0; b < slots.size(); ++b) {
    const int64_t start = length(slots[b]);
    k_[static_cast<size_t>(layer)][slots[b]].narrow(1, start, t).copy_(k[static_cast<int64_t>(b)]);
    v_[static_cast<size_t>(layer)][slots[b]].narrow(1, start, t).copy_(v[static_cast<int64_t>(b)]);
  }
}

std::pair<at::Tensor, at::Tensor> KvCache::read(int layer, const std::vector<int>& slots,
                                                int64_t tokens) const {
  const auto& k = k_[static_cast<size_t>(layer)];
  const auto& v = v_[static_cast<size_t>(layer)];
  if (slots.size() == 1) {
    return {k[slots[0]].narrow(1, 0, tokens).unsqueeze(0), v[slots[0]].narrow(1, 0, tokens).unsqueeze(0)};
  }
  std::vector<int64_t> rows(slots.begin(), slots.end());
  at::Tensor index = at::tensor(rows, at::TensorOptions().dtype(at::kLong)).to(k.device());
  // Narrow first: the copy takes only the positions in use, not every slot's whole length.
  return {k.narrow(2, 0, tokens).index_select(0, index), v.narrow(2, 0, tokens).index_select(0, index)};
}

void KvCache::write_rows(int layer, const at::Tensor& index, const at::Tensor& k,
                         const at::Tensor& v) {
  const int64_t d = k.size(-1);
  k_[static_cast<size_t>(layer)].view({-1, d}).index_copy_(0, index, k.reshape({-1, d}));
  v_[static_cast<size_t>(layer)].view({-1, d}).index_copy_(0, index, v.reshape({-1, d}));
}

std::pair<at::Tensor, at::Tensor> KvCache::rows(int layer, int64_t rows, int64_t tokens) const {
  return {k_[static_cast<size_t>(layer)].narrow(0, 0, rows).narrow(2, 0, tokens),
          v_[static_cast<size_t>(layer)].narrow(0, 0, rows).narrow(2, 0, tokens)};
}

void KvCache::copy_prefix(int from, int to, int64_t tokens) {
  for (size_t layer = 0; layer < k_.size(); ++layer) {
    for (auto* side : {&k_, &v_}) {
      at::Tensor& t = (*side)[layer];  // [slots, kv_heads, max_tokens, D]
      t[to].narrow(1, 0, tokens).copy_(t[from].narrow(1, 0, tokens));
    }
  }
  set_length(to, tokens);
}

}  // namespace llava
