// A request's sampling parameters and every place they cross: the YAML file's generation
// section and a request's JSON read them through read_sampling_keys (the one list of keys
// and their ranges), the wire carries them in schema::Sampling. A new key is a field here,
// a line in sampling.cpp, a field in messages.capnp and its use in the sampler.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/messages.capnp.h"
#include "common/token_table.h"

namespace llava {

class JsonSchema;

struct SamplingParams {
  int max_new_tokens = 64;
  // vLLM's: no stop (the end-of-sequence token, stop_token_ids, a stop string) before this
  // many tokens of the answer. 0 = off.
  int min_tokens = 0;
  double temperature = 0.0;  // 0 = greedy
  int top_k = 0;             // 0 = off (-1 as given is read as 0)
  double top_p = 1.0;        // 1 = off
  double min_p = 0.0;        // 0 = off; else tokens below min_p x the top token's probability go
  double repetition_penalty = 1.0;
  // OpenAI's: subtracted from a token's score once it is in the answer (presence), and for
  // each time it is (frequency); the prompt's tokens are not counted. 0 = off.
  double presence_penalty = 0.0, frequency_penalty = 0.0;
  uint64_t seed = 0;
  // Not a key of the YAML file: a request's (vLLM's stop_token_ids), to which the
  // coordinator adds the model's end-of-sequence ids (unless ignore_eos); generation ends
  // after one of these.
  std::vector<int32_t> stop_token_ids;
  // Not a key of the YAML file: a request's (the API's logprobs). -1: none; else each token
  // comes with its log-probability and those of the `logprobs` most likely tokens at its
  // place, 0 to SamplingLimits::kLogprobs.
  int logprobs = -1;
  // Not a key of the YAML file: with logprobs, each prompt token's too (the API's echo).
  bool prompt_logprobs = false;
  // Not a key of the YAML file: a request's (the API's logit_bias): each id's bias, added to
  // its score before anything else, -100 to 100 (-100 bans it in effect).
  std::vector<std::pair<int32_t, float>> logit_bias;
  // Not a key of the YAML file: a request's (the API's response_format json_object): the
  // answer's text is one JSON object (stages/language/json_constraint.h). The worker is
  // given every token's bytes with it (json_tokens; the wire's LanguageTask carries them).
  bool json_object = false;
  std::shared_ptr<const TokenTable> json_tokens;
  // With json_object, a request's (response_format json_schema): the schema the object
  // follows, as compact JSON text (common/json_schema.h; empty: any object), and in the
  // worker, compiled.
  std::string json_schema;
  std::shared_ptr<const JsonSchema> json_grammar;
};

// Ranges of the keys, the same in the YAML file and in a request.
struct SamplingLimits {
  static constexpr long long kMaxNewTokens = 1 << 20;  // max_new_tokens: [1, this]
  static constexpr long long kTopK = 1 << 24;          // top_k: [-1, this]
  static constexpr double kTemperature = 100.0;        // temperature: [0, this]
  static constexpr double kRepetitionPenalty = 100.0;  // repetition_penalty: (0, this]
  static constexpr double kPresencePenalty = 2.0;      // presence, frequency: [-this, this]
  static constexpr int kLogprobs = 20;                 // logprobs: [-1, this] (OpenAI's top)
  static constexpr double kLogitBias = 100.0;          // a logit_bias value: [-this, this]
  static constexpr size_t kLogitBiasIds = 1024;        // ids in one logit_bias, at most
};

// Where sampling keys are read from: the YAML file's generation section, or one key of a
// request's JSON. Each method gives nothing when `key` is absent, and throws the source's
// own error (ConfigError at file:line:column, RequestError) naming the key and the value
// when the value is not a number in range.
class SamplingKeyReader {
 public:
  virtual ~SamplingKeyReader() = default;
  // A whole number in [lo, hi].
  virtual std::optional<long long> whole(const std::string& key, long long lo, long long hi) = 0;
  // A number in [lo, hi], or (lo, hi] when lo_open.
  virtual std::optional<double> real(const std::string& key, double lo, double hi,
                                     bool lo_open) = 0;
  // A seed: any 64-bit whole number the source can hold.
  virtual std::optional<uint64_t> seed(const std::string& key) = 0;
};

// Reads every sampling key `reader` has into `params`, in the order errors are reported.
void read_sampling_keys(SamplingKeyReader& reader, SamplingParams& params);

// The keys read_sampling_keys reads, in its order.
std::vector<std::string> sampling_keys();

// The wire's copy: the coordinator writes it into a LanguageTask, the worker reads it back.
// Real numbers travel as 32-bit floats.
void to_wire(const SamplingParams& params, schema::Sampling::Builder out);
SamplingParams from_wire(schema::Sampling::Reader in);

}  // namespace llava
