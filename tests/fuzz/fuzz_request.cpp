// libFuzzer target: a request's JSON, as a `serve` client or a batch file line sends it
// (parse_json_request and the sampling keys' checks), and the error reply written back.
#include <cstdint>
#include <string>

#include "common/errors.h"
#include "launch/request_json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  using L = llava::SamplingLimits;
  for (bool batch_line : {false, true}) {
    llava::JsonRequest request;
    try {
      llava::parse_json_request(text, batch_line, request);
      const llava::GenerationSection& g = request.generation;
      // Whatever was accepted is within the file's ranges.
      if (g.max_new_tokens < 1 || g.max_new_tokens > L::kMaxNewTokens) __builtin_trap();
      if (g.top_k < 0 || g.top_k > L::kTopK) __builtin_trap();
      if (!(g.temperature >= 0 && g.temperature <= L::kTemperature)) __builtin_trap();
      if (!(g.top_p > 0 && g.top_p <= 1)) __builtin_trap();
      if (!(g.min_p >= 0 && g.min_p <= 1)) __builtin_trap();
      if (!(g.repetition_penalty > 0 && g.repetition_penalty <= L::kRepetitionPenalty))
        __builtin_trap();
      if (!llava::stop_strings_problem(g.stop).empty()) __builtin_trap();
      llava::json_text({{"id", request.id}, {"prompt", request.prompt}});
    } catch (const llava::RequestError& e) {
      // The error reply can always be written, whatever the input made it quote.
      llava::json_text({{"id", request.id}, {"ok", false}, {"error", e.what()}});
    }
  }
  return 0;
}
