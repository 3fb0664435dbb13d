// The sampling keys with their ranges, and their wire form.
#include "common/sampling.h"

#include <algorithm>
#include <cmath>

namespace llava {

void read_sampling_keys(SamplingKeyReader& reader, SamplingParams& params) {
  using L = SamplingLimits;
  if (auto v = reader.whole("max_new_tokens", 1, L::kMaxNewTokens)) {
    params.max_new_tokens = static_cast<int>(*v);
  }
  if (auto v = reader.whole("min_tokens", 0, L::kMaxNewTokens))
    params.min_tokens = static_cast<int>(*v);
  if (auto v = reader.real("temperature", 0.0, L::kTemperature, false)) params.temperature = *v;
  // -1 is off too, as vLLM takes it (clients written for vLLM send it).
  if (auto v = reader.whole("top_k", -1, L::kTopK))
    params.top_k = std::max(0, static_cast<int>(*v));
  if (auto v = reader.real("top_p", 0.0, 1.0, /*lo_open=*/true)) params.top_p = *v;
  if (auto v = reader.real("min_p", 0.0, 1.0, false)) params.min_p = *v;
  if (auto v = reader.real("repetition_penalty", 0.0, L::kRepetitionPenalty, /*lo_open=*/true)) {
    params.repetition_penalty = *v;
  }
  const double most = L::kPresencePenalty;
  if (auto v = reader.real("presence_penalty", -most, most, false)) params.presence_penalty = *v;
  if (auto v = reader.real("frequency_penalty", -most, most, false)) params.frequency_penalty = *v;
  if (auto v = reader.seed("seed")) params.seed = *v;
}

std::vector<std::string> sampling_keys() {
  // A reader that has no key but writes down the names asked for.
  class Names : public SamplingKeyReader {
   public:
    std::optional<long long> whole(const std::string& key, long long, long long) override {
      names.push_back(key);
      return std::nullopt;
    }
    std::optional<double> real(const std::string& key, double, double, bool) override {
      names.push_back(key);
      return std::nullopt;
    }
    std::optional<uint64_t> seed(const std::string& key) override {
      names.push_back(key);
      return std::nullopt;
    }
    std::vector<std::string> names;
  };
  Names names;
  SamplingParams unused;
  read_sampling_keys(names, unused);
  return names.names;
}

void to_wire(const SamplingParams& params, schema::Sampling::Builder out) {
  out.setMaxNewTokens(static_cast<uint32_t>(params.max_new_tokens));
  out.setMinTokens(static_cast<uint32_t>(params.min_tokens));
  out.setTemperature(static_cast<float>(params.temperature));
  out.setTopK(static_cast<uint32_t>(params.top_k));
  out.setTopP(static_cast<float>(params.top_p));
  out.setMinP(static_cast<float>(params.min_p));
  out.setRepetitionPenalty(static_cast<float>(params.repetition_penalty));
  out.setPresencePenalty(static_cast<float>(params.presence_penalty));
  out.setFrequencyPenalty(static_cast<float>(params.frequency_penalty));
  out.setSeed(params.seed);
  out.setLogprobs(params.logprobs);
  out.setPromptLogprobs(params.prompt_logprobs);
  out.setJsonObject(params.json_object);
  out.setJsonSchema(params.json_schema);
  auto bias = out.initLogitBias(static_cast<unsigned>(params.logit_bias.size()));
  for (size_t i = 0; i < params.logit_bias.size(); ++i) {
    bias[static_cast<unsigned>(i)].setId(params.logit_bias[i].first);
    bias[static_cast<unsigned>(i)].setBias(params.logit_bias[i].second);
  }
  auto stops = out.initStopTokenIds(static_cast<unsigned>(params.stop_token_ids.size()));
  for (size_t i = 0; i < params.stop_token_ids.size(); ++i) {
    stops.set(static_cast<unsigned>(i), params.stop_token_ids[i]);
  }
}

SamplingParams from_wire(schema::Sampling::Reader in) {
  SamplingParams params;
  params.max_new_tokens = static_cast<int>(in.getMaxNewTokens());
  params.min_tokens =
      static_cast<int>(std::min<uint32_t>(in.getMinTokens(), SamplingLimits::kMaxNewTokens));
  params.temperature = in.getTemperature();
  params.top_k = static_cast<int>(in.getTopK());
  params.top_p = in.getTopP();
  params.min_p = in.getMinP();
  params.repetition_penalty = in.getRepetitionPenalty();
  // A peer's out of range (or NaN) penalty is none: it would make every score NaN.
  auto penalty = [](float v) {
    return std::abs(v) <= SamplingLimits::kPresencePenalty ? static_cast<double>(v) : 0.0;
  };
  params.presence_penalty = penalty(in.getPresencePenalty());
  params.frequency_penalty = penalty(in.getFrequencyPenalty());
  params.seed = in.getSeed();
  params.logprobs = std::clamp<int>(in.getLogprobs(), -1, SamplingLimits::kLogprobs);
  params.prompt_logprobs = in.getPromptLogprobs() && params.logprobs >= 0;
  params.json_object = in.getJsonObject();
  params.json_schema = in.getJsonSchema();
  for (int32_t id : in.getStopTokenIds()) params.stop_token_ids.push_back(id);
  // A peer's: at most the API's count, each in range (else left out; the sampler leaves
  // out ids past the vocabulary).
  for (auto entry : in.getLogitBias()) {
    if (params.logit_bias.size() == SamplingLimits::kLogitBiasIds) break;
    if (std::abs(entry.getBias()) <= SamplingLimits::kLogitBias) {
      params.logit_bias.emplace_back(entry.getId(), entry.getBias());
    }
  }
  return params;
}

}  // namespace llava
