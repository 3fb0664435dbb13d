// Requests as JSON: a `serve` client's, a batch file's line, and the sampling keys both (and
// the command line) take. Every error is a RequestError naming the key and the value.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/config.h"

namespace llava {

// One sampling key ("max_new_tokens", "temperature", "top_k", "top_p",
// "repetition_penalty", "seed", "stop") applied to `g`, within the YAML file's ranges.
void apply_sampling(const std::string& key, const nlohmann::json& value, GenerationSection& g);

// A request's string (its "prompt", an image path); throws RequestError naming the key.
std::string string_value(const std::string& key, const nlohmann::json& value);

// A reply or result line as JSON text. Answers are whole characters by construction, but an
// error may quote a path or bytes that are not UTF-8: those become U+FFFD instead of an
// exception that would end the server or the batch.
std::string json_text(const nlohmann::json& value);

// The value as written, shortened to 40 characters: an error must not echo a megabyte back.
std::string shown(const nlohmann::json& value);

struct JsonRequest {
  nlohmann::json id;  // the client's, echoed back: set by the caller as the default
  std::string prompt;
  std::vector<std::string> image_paths;  // batch lines only, as written
  GenerationSection generation;          // set by the caller to the defaults
};

// Fills `out` from one request's JSON text: a client's ("id", "prompt", sampling keys) or,
// with `batch_line`, a batch file's line (also "image" / "images" paths; "prompt" required).
// Throws RequestError saying what is wrong; `out.id` is read first, so the error reply can
// carry it.
void parse_json_request(const std::string& text, bool batch_line, JsonRequest& out);

}  // namespace llava
