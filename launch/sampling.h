// One sampling key of a request ("max_new_tokens", "temperature", "top_k", "top_p",
// "repetition_penalty", "seed", "stop") applied to `g`; throws RequestError naming what is
// wrong.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "common/config.h"

namespace llava {

void apply_sampling(const std::string& key, const nlohmann::json& value, GenerationSection& g);

// A request's string (its "prompt", an image path); throws RequestError naming the key.
std::string string_value(const std::string& key, const nlohmann::json& value);

// A reply or result line as JSON text. Answers are whole characters by construction, but an
// error may quote a path or bytes that are not UTF-8: those become U+FFFD instead of an
// exception that would end the server or the batch.
std::string json_text(const nlohmann::json& value);

}  // namespace llava
