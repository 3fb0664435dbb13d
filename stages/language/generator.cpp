// Prefill, batched decode steps, stop rules.
#include "stages/language/generator.h"

#include <algorithm>
#include <limits>

#include "common/errors.h"
#include "stages/parallel.h"

namespace llava {
namespace {

int32_t argmax(const float* scores, int64_t count) {
  return static_cast<int32_t>(std::max_element(scores, scores + count) - scores);
}

}  // namespace

Generator::Generator(const LlamaDecoder& decoder, int64_t slots, int64_t max_tokens,
                     int64_t prefill_chunk, bool cuda_graphs)
    : decoder_(decoder),
      prefill_chunk_(std::max<int64_t>(1, prefill_chunk)),
      cache_(decoder.config(), slots, max_tokens, decoder.options()),
      decode_(decoder_, cache_, cuda_graphs) {
  const TextConfig& text = decoder.config();
  for (int64_t id : {decoder.image_token(), text.pad_token_id}) {
    const bool stop = std::count(text.eos_token_ids.begin(), text.eos_token_ids.end(), id) > 0;
    if (id >= 0 && id < text.vocab_size && !stop && !std::count(banned_.begin(), banned_.end(), id)) {
      banned_.push_back(id);
    }
  }
  if (!banned_.empty()) {
    banned_ids_ = at::tensor(banned_, at::TensorOptions().dtype(at::kLong)).to(decoder.options().device());
  }
}

at::Tensor Generator::without_banned(at::Tensor logits) const {
  // In place: the logits are fresh, or a CUDA graph's output that its next replay rewrites.
  if (!banned_.empty()) logits.index_fill_(-1, banned_ids_, -std::numeric_limits<float>::infinity());
  return logits;
}

int32_t Generator::draw(Sequence& s, const float* logits, int64_t vocab) {
  return plain_greedy(s.params) ? argmax(logits, vocab)
                                : s.sampler.next(logits, static_cast<size_t>(vocab), s.history);
}

std::optional<Generator::RowLogprobs> Generator::row_logprobs(const at::Tensor& logits, int most) {
  if (most < 0) return std::nullopt;
  const int64_t best = std::min<int64_t>(std::max(most, 1), logits.size(-1));
  auto [scores, ids] = logits.topk(best, -1);
  return RowLogprobs{logits.logsumexp(-1).to(at::kCPU), scores.to(at::kCPU).contiguous(),
                     ids.to(at::kCPU).contiguous()};
}

void Generator::score_prompt(const at::Tensor& hidden, const int32_t* next, int64_t count, int top,
                             std::vector<TokenLogprobs>& out) const {
  const at::Tensor logits = without_banned(decoder_.logits(hidden));  // [count, V]
  const at::Tensor ids = at::from_blob(const_cast<int32_t*>(next), {count, 1}, at::kInt)
                             .to(at::kLong)
                             .to(logits.device());
  const at::Tensor scores = logits.gather(1, ids).squeeze(1).to(at::kCPU).contiguous();
  const auto rows = row_logprobs(logits, top);
  for (int64_t i = 0; i < count; ++i) out.push_back(rows->of(i, scores.data_ptr<float>()[i], top));
}

float Generator::RowLogprobs::best(int64_t row) const {
  return best_scores.data_ptr<float>()[row * best_scores.size(1)];
}

TokenLogprobs Generator::RowLogprobs::of(int64_t row, float token_score, int top) const {
  const float total = log_sum.data_ptr<float>()[row];
  TokenLogprobs out;
  out.logprob = token_score - total;
  const int64_t n = std::min<int64_t>(top, best_scores.size(1));
  const float* scores = best_scores.data_ptr<float>() + row * best_scores.size(1);
  const int64_t* ids = best_ids.data_ptr<int64_t>() + row * best_ids.size(1);
  for (int64_t j = 0; j < n; ++j) {
    out.top_ids.push_back(static_cast<int32_t>(ids[j]));
    out.top_logprobs.push_back(scores[j] - total);
  }
  return out;
}

TokenEvent Generator::choose(uint64_t id, Sequence& s, int32_t token) {
  TokenEvent event{id, token, Finish::kNone, std::nullopt, {}};
  s.history.push_back(event.token);
  ++s.generated;
  if (s.sampler.is_stop(event.token)) {
    event.finish = Finish::kStop;
  } else if (s.generated >= s.params.max_new_tokens) {
    event.finish = Finish::kLength;
  } else if (cache_.length(s.slot) >= cache_.max_tokens()) {
    event.finish = Finish::kContext;  // no room for the token just chosen
  }
  return event;
}

const Generator::Sequence* Generator::twin(const std::vector<int32_t>& prompt, uint64_t image_key,
                                           size_t placeholders_end) const {
  for (const auto& [id, s] : sequences_) {
    if (s.image_key == image_key && s.placeholders_end == placeholders_end &&
        s.history.size() >= prompt.size() &&
        std::equal(prompt.begin(), prompt.end(), s.history.begin())) {
      return &s;
    }
  }
  return nullptr;
}

TokenEvent Generator::start(uint64_t id, const std::vector<int32_t>& prompt,
                            const std::vector<at::Tensor>& images, const SamplingParams& params,
                            size_t placeholders_end, uint64_t image_key) {
  if (prompt.empty()) throw RequestError("request " + std::to_string(id) + ": empty prompt");
  if (static_cast<int64_t>(prompt.size()) >= cache_.max_tokens()) {
    throw RequestError("request " + std::to_string(id) + ": prompt of " +
                       std::to_string(prompt.size()) + " tokens does not fit the context of " +
                       std::to_string(cache_.max_tokens()) + " tokens");
  }
  if (params.max_new_tokens < 1) {
    throw RequestError("request " + std::to_string(id) + ": max_new_tokens must be at least 1");
  }
  if (sequences_.count(id)) {
    throw RequestError("request " + std::to_string(id) + " is already generating");
  }
  // validates before a slot is taken
  at::Tensor embeds = decoder_.embed_prompt(prompt, images, placeholders_end);
  const int slot = cache_.acquire();
  if (slot < 0) throw RequestError("request " + std::to_string(id) + ": no free sequence slot");
  const size_t placeholders = std::min(placeholders_end, prompt.size());
  Sequence s{slot, prompt, 0, params, Sampler(params, placeholders), image_key, placeholders};
  at::Tensor hidden;
  std::vector<TokenLogprobs> prompt_logprobs;
  // A twin's rows are its keys and values for all but the last token; prompt logprobs need
  // every position's hidden state: run in full.
  const Sequence* donor = params.prompt_logprobs ? nullptr : twin(prompt, image_key, placeholders);
  try {
    // In chunks: activations (and the attention's scores) stay bounded by the chunk.
    const int64_t length = embeds.size(1);
    int64_t first = 0;
    if (donor != nullptr && length > 1) {
      first = length - 1;
      cache_.copy_prefix(donor->slot, slot, first);
    }
    prefilled_tokens_ += length - first;
    for (int64_t from = first; from < length; from += prefill_chunk_) {
      const int64_t count = std::min(prefill_chunk_, length - from);
      hidden = decoder_.forward(embeds.narrow(1, from, count), cache_, {slot});
      if (params.prompt_logprobs && params.logprobs >= 0) {  // positions with a next token
        const int64_t scored = std::min(count, length - 1 - from);
        if (scored > 0) {
          score_prompt(hidden[0].narrow(0, 0, scored), prompt.data() + from + 1, scored,
                       params.logprobs, prompt_logprobs);
        }
      }
    }
  } catch (...) {
    cache_.release(slot);
    throw;
  }
  at::Tensor logits = without_banned(decoder_.logits(hidden[0][-1]));  // [V]
  const auto logprobs = row_logprobs(logits.unsqueeze(0), params.logprobs);
  TokenEvent event;
  float score = 0;  // the token's, for its logprob
  if (plain_greedy(params)) {
    event = choose(id, s, static_cast<int32_t>(logits.argmax().item<int64_t>()));
    if (logprobs) score = logprobs->best(0);  // ties: the same score
  } else {
    at::Tensor host = logits.to(at::kCPU).contiguous();
    event = choose(id, s, draw(s, host.data_ptr<float>(), host.numel()));
    score = host.data_ptr<float>()[event.token];
  }
  if (logprobs) event.logprobs = logprobs->of(0, score, params.logprobs);
  event.prompt_logprobs = std::move(prompt_logprobs);
  if (event.finish == Finish::kNone) {
    sequences_.emplace(id, std::move(s));
  } else {
    cache_.release(slot);
  }
  return event;
}

std::vector<TokenEvent> Generator::step() {
  std::vector<TokenEvent> events;
  if (sequences_.empty()) return events;
  // Row s of the step is cache slot s; free slots below the highest in use ride along.
  int max_slot = 0;
  for (const auto& [id, s] : sequences_) max_slot = std::max(max_slot, s.slot);
  std::vector<int64_t> tokens(static_cast<size_t>(max_slot) + 1, 0), positions(tokens.size(), 0);
  int64_t keys = 0;
  for (const auto& [id, s] : sequences_) {
    tokens[static_cast<size_t>(s.slot)] = s.history.back();
    positions[static_cast<size_t>(s.slot)] = cache_.length(s.slot);
    keys = std::max(keys, cache_.length(s.slot) + 1);
  }
  at::Tensor logits = without_banned(decode_.run(tokens, positions, keys));  // [rows, V]
  // One transfer to the host per step: the argmaxes when every row is greedy, else all
  // the scores.
  const bool greedy = std::all_of(sequences_.begin(), sequences_.end(),
                                  [](const auto& e) { return plain_greedy(e.second.params); });
  at::Tensor host = greedy ? logits.argmax(-1).to(at::kCPU) : logits.to(at::kCPU).contiguous();
  const int64_t vocab = logits.size(-1);
  int most = -1;  // logprobs: the most alternatives a row asks for
  for (const auto& [id, s] : sequences_) most = std::max(most, s.params.logprobs);
  const auto logprobs = row_logprobs(logits, most);
  // The rows' draws are independent (each sequence its own sampler): on helper threads,
  // a row each, so that a batch of sampled rows costs about one row's host time.
  std::vector<std::pair<uint64_t, Sequence*>> rows;
  for (auto& [id, s] : sequences_) rows.emplace_back(id, &s);
  std::vector<int32_t> chosen(rows.size(), -1);
  if (greedy) {
    const int64_t* best = host.data_ptr<int64_t>();
    for (size_t i = 0; i < rows.size(); ++i)
      chosen[i] = static_cast<int32_t>(best[rows[i].second->slot]);
  } else {
    const float* scores = host.data_ptr<float>();
    run_parallel(rows.size(), [&](size_t i) {
      Sequence& s = *rows[i].second;
      chosen[i] = draw(s, scores + s.slot * vocab, vocab);
    });
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    Sequence& s = *rows[i].second;
    cache_.set_length(s.slot, cache_.length(s.slot) + 1);
    TokenEvent event = choose(rows[i].first, s, chosen[i]);
    if (logprobs && s.params.logprobs >= 0) {
      const float score = greedy ? logprobs->best(s.slot)  // the argmax's (ties: the same score)
                                 : host.data_ptr<float>()[s.slot * vocab + event.token];
      event.logprobs = logprobs->of(s.slot, score, s.params.logprobs);
    }
    if (event.finish != Finish::kNone) {
      cache_.release(s.slot);
      sequences_.erase(rows[i].first);
    }
    events.push_back(event);
  }
  return events;
}

bool Generator::cancel(uint64_t id) {
  auto it = sequences_.find(id);
  if (it == sequences_.end()) return false;
  cache_.release(it->second.slot);
  sequences_.erase(it);
  return true;
}

}  // namespace llava
