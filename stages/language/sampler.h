// Choosing the next token: the logit bias first (OpenAI's), then the repetition penalty,
// temperature, top-k, top-p, min-p, in the order transformers' generate() applies them,
// the presence and frequency penalties after the repetition penalty (vLLM's order), and in
// JSON mode the tokens the text cannot take left out (json_constraint.h); greedy when
// temperature is 0. Seeded: the same seed and inputs give the same tokens. The tokens
// are ranked (best first, ties by id) only as far as a filter or the draw reads: a draw
// costs a few passes over the vocabulary, not a sort of it.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include "common/sampling.h"
#include "stages/language/json_constraint.h"
#include "stages/language/taken_ids.h"

namespace llava {

class Sampler {
 public:
  // The histories next() is given hold the answer from `answer_from` on (the presence and
  // frequency penalties count those ids only; a history that already holds some of it, a
  // resumed answer's, continues the seeded draws where they were).
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
  // How often each id occurs in a history from a place on, and its distinct ids in order.
  // A sequence's history only grows: take() counts only what it adds to the one it took
  // last (anything else is counted afresh).
  struct Counts {
    TakenIds taken;
    std::vector<int32_t> count, distinct;  // count: one per vocabulary id
    void take(const std::vector<int32_t>& history, size_t from, size_t vocab);
  };
  // Adds each logit_bias id's bias (ids past the vocabulary left out).
  void bias(std::vector<float>& logits) const;
  // The repetition penalty over the history's distinct ids (`seen`), then the presence and
  // frequency penalties over the answer's (`answer`).
  void penalize(std::vector<float>& logits, const Counts& seen, const Counts& answer) const;
  // bias, then penalize, with `seen` and `answer` taking `history` in as asked; then JSON
  // mode's mask, `json` taking the answer in.
  void adjust(std::vector<float>& logits, const std::vector<int32_t>& history, Counts& seen,
              Counts& answer, std::optional<JsonConstraint>& json) const;
  std::optional<JsonConstraint> json_constraint() const;  // JSON mode's, fresh; else none

  SamplingParams params_;
  size_t answer_from_;
  std::mt19937_64 rng_;   // one value a draw (uniform_real_distribution<double>'s 53 bits)
  bool drawn_ = false;    // next() has drawn: a resumed answer's earlier draws are skipped
  Counts seen_, answer_;  // next()'s, kept between draws
  std::optional<JsonConstraint> json_;  // JSON mode's (next()'s), kept between draws
  // Scratch space of next(), kept between draws: a fresh 128 KiB vector is fresh pages
  // (above malloc's mmap threshold), faulted in at every draw.
  std::vector<float> scores_, weights_;
  std::vector<int32_t> order_;
};

}  // namespace llava
