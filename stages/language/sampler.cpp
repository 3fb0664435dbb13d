// Token selection on the host: the logits of one row are a few hundred KB at most.
#include "stages/language/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_set>

namespace llava {
namespace {

int32_t argmax(const std::vector<float>& logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

}  // namespace

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

bool Sampler::is_stop(int32_t token) const {
  return std::find(params_.stop_token_ids.begin(), params_.stop_token_ids.end(), token) !=
         params_.stop_token_ids.end();
}

void Sampler::penalize(std::vector<float>& logits, const std::vector<int32_t>& history) const {
  if (params_.repetition_penalty == 1.0) return;
  const int32_t vocab = static_cast<int32_t>(logits.size());
  std::unordered_set<int32_t> seen(history.begin(), history.end());
  for (int32_t id : seen) {
    if (id < 0 || id >= vocab) continue;
    float& s = logits[static_cast<size_t>(id)];
    s = s < 0 ? s * params_.repetition_penalty : s / params_.repetition_penalty;
  }
}

Sampler::Candidates Sampler::candidates(std::vector<float>& logits) const {
  for (float& s : logits) s /= params_.temperature;
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)];
  });
  size_t keep = order.size();
  if (params_.top_k > 0) keep = std::min(keep, static_cast<size_t>(params_.top_k));
  // Softmax over the kept candidates, in double for a stable cumulative sum.
  const double top = logits[static_cast<size_t>(order[0])];
  Candidates c;
  c.weights.resize(keep);
  for (size_t i = 0; i < keep; ++i) {
    c.weights[i] = std::exp(static_cast<double>(logits[static_cast<size_t>(order[i])]) - top);
    c.total += c.weights[i];
  }
  if (params_.top_p < 1.0) {
    // Keep the smallest prefix whose probability reaches top_p (at least one token).
    double cumulative = 0;
    size_t cut = keep;
    for (size_t i = 0; i < keep; ++i) {
      cumulative += c.weights[i] / c.total;
      if (cumulative >= params_.top_p) {
        cut = i + 1;
        break;
      }
    }
    keep = cut;
    c.total = std::accumulate(c.weights.begin(), c.weights.begin() + static_cast<long>(keep), 0.0);
  }
  if (params_.min_p > 0.0) {
    // A weight is the token's probability over the top token's: keep those >= min_p.
    size_t cut = 1;
    while (cut < keep && c.weights[cut] >= params_.min_p) ++cut;
    keep = cut;
    c.total = std::accumulate(c.weights.begin(), c.weights.begin() + static_cast<long>(keep), 0.0);
  }
  c.weights.resize(keep);
  c.tokens.assign(order.begin(), order.begin() + static_cast<long>(keep));
  return c;
}

int32_t Sampler::next(std::vector<float> logits, const std::vector<int32_t>& history) {
  penalize(logits, history);
  if (params_.temperature <= 0.0) return argmax(logits);
  const Candidates c = candidates(logits);
  double u = std::uniform_real_distribution<double>(0.0, c.total)(rng_);
  for (size_t i = 0; i < c.tokens.size(); ++i) {
    if (u < c.weights[i]) return c.tokens[i];
    u -= c.weights[i];
  }
  return c.tokens.back();
}

std::vector<std::pair<int32_t, double>> Sampler::distribution(
    std::vector<float> logits, const std::vector<int32_t>& history) const {
  penalize(logits, history);
  if (params_.temperature <= 0.0) return {{argmax(logits), 1.0}};
  const Candidates c = candidates(logits);
  std::vector<std::pair<int32_t, double>> out;
  for (size_t i = 0; i < c.tokens.size(); ++i) out.emplace_back(c.tokens[i], c.weights[i] / c.total);
  return out;
}

}  // namespace llava
