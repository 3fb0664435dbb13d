// The weights of one LLaMA decoder layer. q, k and v are one matrix (one product per
// token instead of three), and so are gate and up.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "stages/language/linear.h"

namespace llava {

struct LlamaLayer {
  at::Tensor input_norm, post_norm;  // [hidden]
  Linear qkv, o, gate_up, down;

  // Every stored tensor, in a fixed order (streaming copies them buffer to buffer).
  std::vector<at::Tensor> tensors() const {
    std::vector<at::Tensor> out{input_norm, post_norm};
    for (const Linear* linear : {&qkv, &o, &gate_up, &down}) {
      for (auto& t : linear->tensors()) out.push_back(t);
    }
    return out;
  }
  int64_t bytes() const {
    int64_t total = 0;
    for (const auto& t : tensors()) total += static_cast<int64_t>(t.nbytes());
    return total;
  }
  // f(tensor&) on every stored tensor, in tensors()'s order; f may replace it.
  template <typename F>
  void visit(F&& f) {
    f(input_norm);
    f(post_norm);
    for (Linear* linear : {&qkv, &o, &gate_up, &down}) linear->visit(f);
  }
  template <typename Move>
  LlamaLayer map(Move move) const {
    return {move(input_norm), move(post_norm), qkv.map(move), o.map(move), gate_up.map(move),
            down.map(move)};
  }
};

}  // namespace llava
