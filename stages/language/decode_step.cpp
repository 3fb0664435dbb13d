// Decode-step bucketing; the graphs themselves are GraphCache's.
#include "stages/language/decode_step.h"

#include <algorithm>

namespace llava {
namespace {

constexpr int64_t kKeyBucket = 256;

}  // namespace

DecodeStep::DecodeStep(const LlamaDecoder& decoder, KvCache& cache, bool cuda_graphs)
    : decoder_(decoder),
      cache_(cache),
      graphs_(decoder.options().device(), cuda_graphs && !decoder.streams_layers()) {}

int64_t DecodeStep::rows_for(int64_t rows, int64_t slots) {
  int64_t r = 1;
  while (r < rows) r *= 2;
  return std::min(r, slots);
}

int64_t DecodeStep::keys_for(int64_t keys, int64_t max_tokens) {
  return std::min((keys + kKeyBucket - 1) / kKeyBucket * kKeyBucket, max_tokens);
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
  at::Tensor on_device = at::tensor(p, at::kLong).to(device);
  return graphs_.run(rows << 32 | keys, {embeds, on_device}, [&](const std::vector<at::Tensor>& in) {
    return decoder_.decode(in[0], in[1], cache_, keys);
  });
}

}  // namespace llava
