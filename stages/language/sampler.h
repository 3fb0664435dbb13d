// Choosing the next token: repetition penalty, then temperature, top-k, top-p, in the
// order transformers' generate() applies them; greedy when temperature is 0. Seeded: the
// same seed and inputs give the same tokens.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace llava {

struct SamplingParams {
  int max_new_tokens = 64;
  float temperature = 0.0f;  // 0 = greedy
  int top_k = 0;             // 0 = off
  float top_p = 1.0f;
  float repetition_penalty = 1.0f;
  uint64_t seed = 0;
  std::vector<int32_t> stop_token_ids;  // generation ends after one of these
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // logits: vocabulary scores (float32, host memory); history: prompt + generated ids.
  int32_t next(std::vector<float> logits, const std::vector<int32_t>& history);
  bool is_stop(int32_t token) const;

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

}  // namespace llava
