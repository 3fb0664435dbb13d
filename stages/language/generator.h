// The generation loop of the language stage: sequences start (prefill: prompt with image
// embeddings spliced in, first token) and then advance together, one decode step per
// call for all of them, joining and leaving between steps. A sequence ends on a stop
// token (EOS), at max_new_tokens, or when its context is full.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <optional>
#include <vector>

#include "stages/language/decode_step.h"
#include "stages/language/kv_cache.h"
#include "stages/language/llama_decoder.h"
#include "stages/language/sampler.h"

namespace llava {

enum class Finish { kNone, kStop, kLength, kContext, kCancelled };

// A token's log-probability under the model (the log-softmax of its scores, banned ids
// excluded, before the repetition penalty, temperature and the top-k/top-p/min-p cuts), and
// the most likely tokens at its place with theirs, best first.
struct TokenLogprobs {
  float logprob = 0;
  std::vector<int32_t> top_ids;
  std::vector<float> top_logprobs;
};

struct TokenEvent {
  uint64_t id = 0;
  int32_t token = -1;  // -1 for a cancellation
  Finish finish = Finish::kNone;
  std::optional<TokenLogprobs> logprobs;  // when its request asked (SamplingParams::logprobs)
  // A request's first token, when it asked (prompt_logprobs): those of its prompt's tokens
  // from the second on.
  std::vector<TokenLogprobs> prompt_logprobs;
};

class Generator {
 public:
  // `prefill_chunk`: prompt tokens per forward pass (bounds prefill activations).
  Generator(const LlamaDecoder& decoder, int64_t slots, int64_t max_tokens,
            int64_t prefill_chunk = 512, bool cuda_graphs = true);

  bool has_capacity() const { return cache_.free_slots() > 0; }
  size_t active() const { return sequences_.size(); }
  int64_t slots() const { return cache_.slots(); }  // sequences the KV cache holds at most
  size_t cuda_graphs() const { return decode_.graphs(); }
  int64_t max_tokens() const { return cache_.max_tokens(); }

  // Prefills and returns the first token. Throws RequestError (prompt longer than the
  // context, image count mismatch) without taking a slot. Image tokens are placeholders
  // only among the first `placeholders_end` ids (the rest: an earlier attempt's tokens).
  // `image_key` names the images' contents (0: no images): a running sequence whose ids
  // begin with this prompt, with the same key and placeholders, has its keys and values
  // already (another choice of the same request): they are copied, and only the prompt's
  // last token runs.
  TokenEvent start(uint64_t id, const std::vector<int32_t>& prompt,
                   const std::vector<at::Tensor>& images, const SamplingParams& params,
                   size_t placeholders_end = SIZE_MAX, uint64_t image_key = 0);
  // Prompt tokens run through the model so far (those copied from a twin not counted).
  int64_t prefilled_tokens() const { return prefilled_tokens_; }
  // Ids never sampled: the image token and the pad token (added tokens that mean nothing
  // as text; transformers' LLaVA never emits them in practice), unless one is a stop token.
  const std::vector<int64_t>& banned_tokens() const { return banned_; }
  // One token for every running sequence, in one batch.
  std::vector<TokenEvent> step();
  bool cancel(uint64_t id);

 private:
  struct Sequence {
    int slot;
    std::vector<int32_t> history;  // prompt + generated
    int generated = 0;
    SamplingParams params;
    Sampler sampler;
    uint64_t image_key = 0;  // start()'s: which images its prompt's placeholders hold
    size_t placeholders_end = 0;
  };
  // A running sequence whose cache holds `prompt`'s first tokens as this prompt would
  // (start()), or null.
  const Sequence* twin(const std::vector<int32_t>& prompt, uint64_t image_key,
                       size_t placeholders_end) const;
  // logits [..., V] with the banned ids at -inf.
  at::Tensor without_banned(at::Tensor logits) const;
  // The parts of rows' log-softmax that logprobs need, on the host: each row's log-sum-exp
  // and its `best` largest scores with their ids (computed where the scores are).
  struct RowLogprobs {
    at::Tensor log_sum, best_scores, best_ids;  // [rows], [rows, best], [rows, best]
    float best(int64_t row) const;              // the row's largest score
    // A token of score `token_score` in `row`, with the row's `top` best tokens.
    TokenLogprobs of(int64_t row, float token_score, int top) const;
  };
  // logits [rows, V]; for the sequences' largest SamplingParams::logprobs (nothing when
  // none asks, the usual case: no work at all then).
  static std::optional<RowLogprobs> row_logprobs(const at::Tensor& logits, int most);
  // The logprobs of `next` (the tokens after a prompt chunk's positions), with `top`
  // alternatives, from the chunk's hidden states [positions, H]: appended to `out`.
  void score_prompt(const at::Tensor& hidden, const int32_t* next, int64_t count, int top,
                    std::vector<TokenLogprobs>& out) const;
  // The next token of `sequence` from its row's scores on the host (its sampler; the
  // largest when it is plain greedy). Touches only the sequence's sampler: rows draw on
  // threads of their own.
  static int32_t draw(Sequence& sequence, const float* logits, int64_t vocab);
  // Takes `token` as the sequence's next: its history, and whether it ends there.
  TokenEvent choose(uint64_t id, Sequence& sequence, int32_t token);
  static bool plain_greedy(const SamplingParams& params) {
    return params.temperature <= 0.0 && params.repetition_penalty == 1.0 &&
           params.presence_penalty == 0.0 && params.frequency_penalty == 0.0 &&
           params.logit_bias.empty() && !params.json_object && params.min_tokens == 0;
  }

  const LlamaDecoder& decoder_;
  int64_t prefill_chunk_;
  KvCache cache_;
  DecodeStep decode_;
  std::map<uint64_t, Sequence> sequences_;
  int64_t prefilled_tokens_ = 0;
  std::vector<int64_t> banned_;
  at::Tensor banned_ids_;  // banned_ on the decoder's device
};

}  // namespace llava
