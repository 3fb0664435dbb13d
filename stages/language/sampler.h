// Choosing the next token: the logit bias first (OpenAI's), then the repetition penalty,
// temperature, top-k, top-p, min-p, in the order transformers' generate() applies them,
// the presence and frequency penalties after the repetition penalty (vLLM's order); greedy
// when temperature is 0. Seeded: the same seed and inputs give the same tokens. The tokens
// are ranked (best first, ties by id) only as far as a filter or the draw reads: a draw
// costs a few passes over the vocabulary, not a sort of it.
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "common/sampling.h"

namespace llava {

class Sampler {
 public:
  // The histories next() is given hold the answer from `answer_from` on (the presence and
  // frequency penalties count those ids only).
  explicit Sampler(const SamplingParams& params, size_t answer_from = 0);
  // logits: `vocab` scores (float32, host memory); history: prompt + generated ids.
  int32_t next(const float* logits, size_t vocab, const std::vector<int32_t>& history);
  int32_t next(const std::vector<float>& logits, const std::vector<int32_t>& history);
  // The tokens next() draws from, most likely first, with their probabilities (summing to
  // 1); greedy: the one token.
  std::vector<std::pair<int32_t, double>> distribution(std::vector<float> logits,
                                                       const std::vector<int32_t>& history) const;
  bool is_stop(int32_t token) const;

 private:
  class Ranking;
  // The tokens left after the filters, best first: the first `keep` of `ranking` (sorted as
  // far as read), with weights relative to the best (whose weight is 1) and their sum.
  struct Candidates;
  // `order`, `weights`: scratch space for the ranking and the weights.
  Candidates candidates(std::vector<float>& logits, std::vector<int32_t>& order,
                        std::vector<float>& weights) const;
  // Penalizes the distinct ids of `history`, taking in only what it adds to the history of
  // the last call when it grew from that one (as a sequence's does).
  void penalize(std::vector<float>& logits, const std::vector<int32_t>& history);
  // Adds each logit_bias id's bias (ids past the vocabulary left out).
  void bias(std::vector<float>& logits) const;
  static void penalize(std::vector<float>& logits, const std::vector<int32_t>& unique_ids,
                       double penalty);
  // The presence and frequency penalties over the answer's ids in `history`, counting only
  // what it adds to the last call's when it grew from that one.
  void penalize_answer(std::vector<float>& logits, const std::vector<int32_t>& history);
  // `counts` (a vocabulary's) of the ids in [from, to), `distinct` the ids counted first there.
  static void count(std::vector<int32_t>::const_iterator from,
                    std::vector<int32_t>::const_iterator to, std::vector<int32_t>& counts,
                    std::vector<int32_t>& distinct);
  void penalize_answer(std::vector<float>& logits, const std::vector<int32_t>& counts,
                       const std::vector<int32_t>& distinct) const;
  // Appends to `distinct` the ids in [from, to) within `mask`'s vocabulary not marked in it
  // yet, marking them.
  static void add_distinct(std::vector<int32_t>::const_iterator from,
                           std::vector<int32_t>::const_iterator to, std::vector<bool>& mask,
                           std::vector<int32_t>& distinct);

  SamplingParams params_;
  size_t answer_from_;
  std::mt19937_64 rng_;
  // The answer's ids penalize_answer() counted last, their counts and distinct ids.
  std::vector<int32_t> counted_, answer_counts_, answer_ids_;
  // The history penalize() saw last, and its distinct ids (as a list and as a mask).
  std::vector<int32_t> seen_history_, seen_;
  std::vector<bool> seen_mask_;
  // Scratch space of next(), kept between draws: a fresh 128 KiB vector is fresh pages
  // (above malloc's mmap threshold), faulted in at every draw.
  std::vector<float> scores_, weights_;
  std::vector<int32_t> order_;
};

}  // namespace llava
