// Token selection on the host: the logits of one row are a few hundred KB at most, and a
// draw reads them a few times (scale, best, sum of weights) and ranks only the few best.
#include "stages/language/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace llava {

// The vocabulary best first (larger score first, ties by smaller id: what a stable sort by
// score gives), sorted only as far as read: the next part is partially sorted from the
// unsorted rest when a read reaches it, in parts that double. A set of the best (first(m),
// prefix_reaching) is found without sorting it.
class Sampler::Ranking {
  // The ranking's order: larger score first, ties by smaller id.
  struct Before {
    const std::vector<float>* scores;
    bool operator()(int32_t a, int32_t b) const {
      const float sa = (*scores)[static_cast<size_t>(a)], sb = (*scores)[static_cast<size_t>(b)];
      return sa > sb || (sa == sb && a < b);
    }
  };
  Before before() const { return Before{&scores_}; }

 public:
  // `order`: scratch space, kept by the caller between draws (no fresh pages each time).
  Ranking(const std::vector<float>& scores, std::vector<int32_t>& order)
      : scores_(scores), order_(order) {
    order_.resize(scores.size());
    std::iota(order_.begin(), order_.end(), 0);
  }
  int32_t at(size_t i) {
    if (i >= sorted_) {
      size_t to = std::min(order_.size(), std::max(i + 1, 2 * sorted_ + kFirstPart));
      const auto from = order_.begin() + static_cast<long>(sorted_);
      if (to > order_.size() / 8) {  // a heap's partial sort of much is slower than a sort
        std::sort(from, order_.end(), before());
        to = order_.size();
      } else {
        std::partial_sort(from, order_.begin() + static_cast<long>(to), order_.end(), before());
      }
      sorted_ = to;
      best_ = sorted_;
    }
    return order_[i];
  }
  // Whether at(i) is cheap: ranked already, or a part of at most kCheapPart to sort.
  bool cheap(size_t i) const {
    return i < sorted_ || std::max(i + 1, 2 * sorted_ + kFirstPart) <= kCheapPart;
  }
  // The ids of the `m` best, as the first `m` of the order (the ranked ones ranked; the rest
  // in no order): one selection, not a sort.
  const std::vector<int32_t>& first(size_t m) {
    if (m > sorted_ && m != best_ && m < order_.size()) {
      // The best m lie past the best best_ when m is more, else among them.
      const size_t from = m > best_ ? best_ : sorted_, to = m > best_ ? order_.size() : best_;
      std::nth_element(order_.begin() + static_cast<long>(from),
                       order_.begin() + static_cast<long>(m),
                       order_.begin() + static_cast<long>(to), before());
      best_ = m;
    }
    return order_;
  }
  // The fewest best tokens whose probabilities reach `top_p`, at most `limit` (first(limit)
  // taken), when the first `from` (== sorted) hold `cumulative`; `probability(id)`. The
  // scores below the ranked ones go into buckets of equal width: the buckets' sums find the
  // one where top_p is reached, and only that bucket is sorted. The result's tokens are then
  // the first of the order.
  template <typename Probability>
  size_t prefix_reaching(size_t from, size_t limit, double cumulative, double top_p,
                         Probability probability) {
    first(limit);
    const auto begin = order_.begin() + static_cast<long>(from),
               end = order_.begin() + static_cast<long>(limit);
    float hi = -INFINITY, lo = INFINITY;  // over the finite scores
    for (auto it = begin; it != end; ++it) {
      const float s = score(*it);
      if (!std::isfinite(s)) continue;
      hi = std::max(hi, s);
      lo = std::min(lo, s);
    }
    constexpr int kBuckets = 4096;
    // Larger score, smaller bucket (monotone: equal scores share one); a banned token's
    // -inf (weight 0) the last.
    const float scale = hi > lo ? static_cast<float>(kBuckets) / (hi - lo) : 0.0f;
    auto bucket = [&](int32_t id) {
      const float s = score(id);
      return std::isfinite(s) ? std::min(kBuckets - 1, static_cast<int>((hi - s) * scale))
                              : kBuckets - 1;
    };
    mass_.assign(kBuckets, 0.0);
    for (auto it = begin; it != end; ++it)
      mass_[static_cast<size_t>(bucket(*it))] += probability(*it);
    int boundary = kBuckets - 1;
    for (int b = 0; b < kBuckets; ++b) {
      if (cumulative + mass_[static_cast<size_t>(b)] >= top_p) {
        boundary = b;
        break;
      }
      cumulative += mass_[static_cast<size_t>(b)];
    }
    // The buckets before the boundary's, then the boundary's, ranked, walked.
    const auto above =
        std::partition(begin, end, [&](int32_t id) { return bucket(id) < boundary; });
    const auto rest =
        std::partition(above, end, [&](int32_t id) { return bucket(id) == boundary; });
    std::sort(above, rest, before());
    size_t m = limit;
    for (auto it = above; it != rest; ++it) {
      if ((cumulative += probability(*it)) >= top_p) {
        m = static_cast<size_t>(it - order_.begin()) + 1;
        break;
      }
    }
    if (m == limit) m = static_cast<size_t>(rest - order_.begin());  // not reached (rounding): all
    best_ = m;
    return m;
  }
  float score(int32_t id) const { return scores_[static_cast<size_t>(id)]; }
  size_t size() const { return order_.size(); }

 private:
  static constexpr size_t kFirstPart = 64, kCheapPart = 256;
  const std::vector<float>& scores_;
  std::vector<int32_t>& order_;
  size_t sorted_ = 0;  // the first sorted_ of the order are ranked
  size_t best_ = 0;    // the first best_ (>= sorted_) are the best best_, in no order past sorted_
  std::vector<double> mass_;
};

namespace {

// A token's weight relative to the best one (exp of the score's difference): in float, which
// costs a third of the double's, as the one function every sum and draw uses. Summed in
// double.
inline double weight_of(float score, float top) {
  return std::exp(score - top);
}

}  // namespace

struct Sampler::Candidates {
  Ranking ranking;
  size_t keep = 0;   // the first `keep` of the ranking
  float top = 0;     // the best score
  double total = 0;  // the kept weights' sum
  const float* weights =
      nullptr;  // every token's, where they were all needed (else each when read)
  double weight_of_id(int32_t id) const {
    return weights != nullptr ? weights[id] : weight_of(ranking.score(id), top);
  }
  double weight(size_t i) { return weight_of_id(ranking.at(i)); }
  // The kept weights' sum, in the order's order (ranked first).
  double sum_of_kept() {
    const std::vector<int32_t>& order = ranking.first(keep);
    double sum = 0;
    for (size_t i = 0; i < keep; ++i) sum += weight_of_id(order[i]);
    return sum;
  }
};

namespace {

int32_t argmax(const std::vector<float>& logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

}  // namespace

Sampler::Sampler(const SamplingParams& params, size_t answer_from)
    : params_(params), answer_from_(answer_from), rng_(params.seed), json_(json_constraint()) {}

std::optional<JsonConstraint> Sampler::json_constraint() const {
  if (!params_.json_object || !params_.json_tokens) return std::nullopt;
  return JsonConstraint(params_.json_tokens, params_.stop_token_ids,
                        params_.json_grammar ? params_.json_grammar : JsonSchema::any_object());
}

bool Sampler::is_stop(int32_t token) const {
  return std::find(params_.stop_token_ids.begin(), params_.stop_token_ids.end(), token) !=
         params_.stop_token_ids.end();
}

void Sampler::Counts::take(const std::vector<int32_t>& history, size_t from, size_t vocab) {
  const bool sized = count.size() == vocab;  // else nothing was counted for this vocabulary
  if (!sized) taken.forget();
  size_t begin = 0;
  if (!taken.take(history, from, begin) || !sized) {
    distinct.clear();
    count.assign(vocab, 0);
  }
  for (size_t i = begin; i < history.size(); ++i) {
    const int32_t id = history[i];
    if (id < 0 || static_cast<size_t>(id) >= vocab) continue;
    if (count[static_cast<size_t>(id)]++ == 0) distinct.push_back(id);
  }
}

void Sampler::bias(std::vector<float>& logits) const {
  for (const auto& [id, amount] : params_.logit_bias) {
    if (id >= 0 && static_cast<size_t>(id) < logits.size())
      logits[static_cast<size_t>(id)] += amount;
  }
}

void Sampler::penalize(std::vector<float>& logits, const Counts& seen, const Counts& answer) const {
  if (params_.repetition_penalty != 1.0) {
    const double penalty = params_.repetition_penalty;
    for (int32_t id : seen.distinct) {
      float& s = logits[static_cast<size_t>(id)];
      s = s < 0 ? s * penalty : s / penalty;
    }
  }
  if (params_.presence_penalty != 0.0 || params_.frequency_penalty != 0.0) {
    for (int32_t id : answer.distinct) {
      const auto n = static_cast<double>(answer.count[static_cast<size_t>(id)]);
      float& s = logits[static_cast<size_t>(id)];
      s = static_cast<float>(s - params_.frequency_penalty * n - params_.presence_penalty);
    }
  }
}

void Sampler::adjust(std::vector<float>& logits, const std::vector<int32_t>& history, Counts& seen,
                     Counts& answer, std::optional<JsonConstraint>& json) const {
  bias(logits);
  if (params_.repetition_penalty != 1.0) seen.take(history, 0, logits.size());
  if (params_.presence_penalty != 0.0 || params_.frequency_penalty != 0.0) {
    answer.take(history, answer_from_, logits.size());
  }
  penalize(logits, seen, answer);
  if (history.size() < answer_from_ + static_cast<size_t>(params_.min_tokens)) {
    // min_tokens: no stop yet (the answer's tokens so far, a resumed one's included).
    for (int32_t id : params_.stop_token_ids) {
      if (id >= 0 && static_cast<size_t>(id) < logits.size())
        logits[static_cast<size_t>(id)] = -std::numeric_limits<float>::infinity();
    }
  }
  if (json) {  // last: what the text cannot take is out whatever its score
    json->take(history, answer_from_);
    json->mask(logits.data(), logits.size());
  }
}

Sampler::Candidates Sampler::candidates(std::vector<float>& logits, std::vector<int32_t>& order,
                                        std::vector<float>& weights) const {
  const double temperature = params_.temperature;
  for (float& s : logits) s = static_cast<float>(s / temperature);
  Candidates c{Ranking(logits, order)};
  const size_t vocab = logits.size();
  c.keep = params_.top_k > 0 ? std::min(vocab, static_cast<size_t>(params_.top_k)) : vocab;
  c.top = logits[static_cast<size_t>(c.ranking.at(0))];
  // Softmax over the kept candidates, summed in double for a stable cumulative sum.
  if (c.keep == vocab) {
    // Every weight is read again past this (the filters, a deep draw): kept.
    weights.resize(vocab);
    double part[4] = {0, 0, 0, 0};  // four sums: one add's latency no longer sets the pace
    size_t i = 0;
    for (; i + 4 <= vocab; i += 4) {
      for (size_t k = 0; k < 4; ++k)
        part[k] += weights[i + k] = static_cast<float>(weight_of(logits[i + k], c.top));
    }
    for (; i < vocab; ++i) part[0] += weights[i] = static_cast<float>(weight_of(logits[i], c.top));
    c.total = (part[0] + part[1]) + (part[2] + part[3]);
    c.weights = weights.data();
  } else {
    c.total = c.sum_of_kept();
  }
  if (params_.top_p < 1.0) {
    // Keep the smallest prefix whose probability reaches top_p (at least one token): ranked
    // while that is cheap (a peaked row reaches it in a few), else by buckets of scores.
    double cumulative = 0;
    size_t i = 0;
    for (; i < c.keep && c.ranking.cheap(i); ++i) {
      cumulative += c.weight(i) / c.total;
      if (cumulative >= params_.top_p) break;
    }
    if (i < c.keep && cumulative >= params_.top_p) {
      c.keep = i + 1;
    } else if (i < c.keep) {
      c.keep = c.ranking.prefix_reaching(i, c.keep, cumulative, params_.top_p,
                                         [&c](int32_t id) { return c.weight_of_id(id) / c.total; });
    }
    c.total = c.sum_of_kept();
  }
  if (params_.min_p > 0.0) {
    // A weight is the token's probability over the top token's: keep those >= min_p. They
    // are a prefix of the ranking (at least its first): count them without ranking them.
    size_t above = 0;
    for (size_t id = 0; id < vocab; ++id)
      above += c.weight_of_id(static_cast<int32_t>(id)) >= params_.min_p;
    c.keep = std::max<size_t>(1, std::min(c.keep, above));
    c.total = c.sum_of_kept();
  }
  return c;
}

int32_t Sampler::next(const float* logits, size_t vocab, const std::vector<int32_t>& history) {
  scores_.assign(logits, logits + vocab);
  adjust(scores_, history, seen_, answer_, json_);
  if (params_.temperature <= 0.0) return argmax(scores_);
  if (!drawn_) {
    // A resumed answer (a worker died): each of its tokens so far took one draw of the
    // seeded generator; skip them, so that the rest is drawn as it would have been.
    drawn_ = true;
    if (history.size() > answer_from_) rng_.discard(history.size() - answer_from_);
  }
  Candidates c = candidates(scores_, order_, weights_);
  // The kept tokens in the order's order: the ranked (the likeliest) first, so that a peaked
  // row's draw ends within them; a draw deep into a flat one walks the rest unsorted.
  double u = std::uniform_real_distribution<double>(0.0, c.total)(rng_);
  const std::vector<int32_t>& kept = c.ranking.first(c.keep);
  for (size_t i = 0; i < c.keep; ++i) {
    const double w = c.weight_of_id(kept[i]);
    if (u < w) return kept[i];
    u -= w;
  }
  return kept[c.keep - 1];
}

int32_t Sampler::next(const std::vector<float>& logits, const std::vector<int32_t>& history) {
  return next(logits.data(), logits.size(), history);
}

std::vector<std::pair<int32_t, double>> Sampler::distribution(
    std::vector<float> logits, const std::vector<int32_t>& history) const {
  Counts seen, answer;
  std::optional<JsonConstraint> json = json_constraint();
  adjust(logits, history, seen, answer, json);
  if (params_.temperature <= 0.0) return {{argmax(logits), 1.0}};
  std::vector<int32_t> order;
  std::vector<float> weights;
  Candidates c = candidates(logits, order, weights);
  std::vector<std::pair<int32_t, double>> out;
  for (size_t i = 0; i < c.keep; ++i) out.emplace_back(c.ranking.at(i), c.weight(i) / c.total);
  return out;
}

}  // namespace llava
