// Sampling keys of a request (command line, JSONL line, or a client's JSON), validated.
#include "launch/sampling.h"

#include <algorithm>

#include "common/config.h"
#include "common/errors.h"

namespace llava {

// Sampling overrides shared by the command line and JSONL lines.
void apply_sampling(const std::string& key, const nlohmann::json& value, GenerationSection& g) {
  if (key == "max_new_tokens") {
    g.max_new_tokens = value.get<int>();
    if (g.max_new_tokens < 1) throw RequestError("max_new_tokens must be at least 1");
  } else if (key == "temperature") {
    g.temperature = value.get<double>();
    if (g.temperature < 0) throw RequestError("temperature must be >= 0");
  } else if (key == "top_k") {
    g.top_k = value.get<int>();
    if (g.top_k < 0) throw RequestError("top_k must be >= 0");
  } else if (key == "top_p") {
    g.top_p = value.get<double>();
    if (g.top_p <= 0 || g.top_p > 1) throw RequestError("top_p must be in (0, 1]");
  } else if (key == "repetition_penalty") {
    g.repetition_penalty = value.get<double>();
    if (g.repetition_penalty <= 0) throw RequestError("repetition_penalty must be > 0");
  } else if (key == "seed") {
    g.seed = value.get<uint64_t>();
  } else if (key == "stop") {
    if (value.is_string()) {
      g.stop = {value.get<std::string>()};
    } else if (value.is_array() && std::all_of(value.begin(), value.end(),
                                               [](const auto& v) { return v.is_string(); })) {
      g.stop = value.get<std::vector<std::string>>();
    } else {
      throw RequestError("stop must be a string or a list of strings");
    }
    const std::string problem = stop_strings_problem(g.stop);
    if (!problem.empty()) throw RequestError("stop: " + problem);
  } else {
    throw RequestError("unknown key '" + key + "'");
  }
}

}  // namespace llava
