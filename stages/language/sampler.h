// Choosing the next token: repetition penalty, then temperature, top-k, top-p, min-p, in
// the order transformers' generate() applies them; greedy when temperature is 0. Seeded:
// the same seed and inputs give the same tokens.
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "common/sampling.h"

namespace llava {

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // logits: vocabulary scores (float32, host memory); history: prompt + generated ids.
  int32_t next(std::vector<float> logits, const std::vector<int32_t>& history);
  // The tokens next() draws from, most likely first, with their probabilities (summing to
  // 1); greedy: the one token.
  std::vector<std::pair<int32_t, double>> distribution(std::vector<float> logits,
                                                       const std::vector<int32_t>& history) const;
  bool is_stop(int32_t token) const;

 private:
  // The tokens left after the filters, most likely first, with weights relative to the
  // first (whose weight is 1), and the weights' sum.
  struct Candidates {
    std::vector<int32_t> tokens;
    std::vector<double> weights;
    double total = 0;
  };
  void penalize(std::vector<float>& logits, const std::vector<int32_t>& history) const;
  Candidates candidates(std::vector<float>& logits) const;

  SamplingParams params_;
  std::mt19937_64 rng_;
};

}  // namespace llava
