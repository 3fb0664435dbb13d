// Requests as JSON: a `serve` client's, a batch file's line, and the sampling keys both (and
// the command line's flags) take. Every error is a RequestError naming the key and the value.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/command_line.h"
#include "common/config.h"
#include "common/json_depth.h"
#include "coordinator/token_logprob.h"

namespace llava {

// One sampling key (common/sampling.h's, or "stop") applied to `g`, within the YAML file's
// ranges; an unknown key is an error too.
void apply_sampling(const std::string& key, const nlohmann::json& value, GenerationSection& g);
bool is_sampling_key(const std::string& key);
constexpr size_t kMaxStopTokenIds = 64;  // a request's stop_token_ids, at most
constexpr size_t kMaxJsonSchemaBytes = 64 * 1024;  // a response_format's schema, as compact JSON

// nlohmann::json sorts an object's keys, and a schema's properties come in the order given:
// the response_format in `value` (at the keys `at`; `value` parsed from `text`) gets that
// order from `text` (common/json_schema.h's with_property_order). Anything else: unchanged.
void keep_schema_order(std::string_view text, nlohmann::json& value,
                       const std::vector<std::string>& at);

// A sampling key given on a command line, as JSON, checked; applied to the defaults later.
using SamplingFlags = std::vector<std::pair<std::string, nlohmann::json>>;
// The sampling keys as flags of `command` (--max-new-tokens, ..., --stop): each value is
// JSON (a bare word: a string, for --stop), checked as apply_sampling checks it (an error
// names the flag and the value: "--top-p 2: top_p: 2 is out of range (0, 1]") and added
// to `flags` (a flag given twice: its last value).
void add_sampling_flags(CLI::App& command, SamplingFlags& flags);

// A request's string (its "prompt", an image path); throws RequestError naming the key.
std::string string_value(const std::string& key, const nlohmann::json& value);

// json_text (a reply or result line as JSON text) and shown (a value in an error, 40
// characters at most) are common/json_depth.h's.

struct JsonRequest {
  nlohmann::json id;  // the client's, echoed back: set by the caller as the default
  std::string prompt;
  std::vector<std::string> image_paths;  // batch lines only, as written
  GenerationSection generation;          // set by the caller to the defaults
};

// Fills `out` from one request's JSON text: a client's ("id", "prompt", sampling keys,
// "logprobs": how many alternatives come with each token's logprob, 0-20) or, with
// `batch_line`, a batch file's line (also "image" / "images" paths; "prompt" required).
// Throws RequestError saying what is wrong; `out.id` is read first, so the error reply can
// carry it.
void parse_json_request(const std::string& text, bool batch_line, JsonRequest& out);

// A logprobs count (how many alternatives come with each token's logprob): a whole number
// in [0, SamplingLimits::kLogprobs]; else a RequestError naming `key` and the value.
int logprobs_count(const std::string& key, const nlohmann::json& value);

// An answer's logprobs in a reply or result line: [{"id", "text", "logprob", "top": [{"id",
// "text", "logprob"}]}] per token (a text that is part of a character: U+FFFD).
nlohmann::json logprobs_array(const std::vector<TokenLogprob>& logprobs);

}  // namespace llava
