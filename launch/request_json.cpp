// Requests as JSON (a client's, a batch line), and their sampling keys, validated with the
// ranges the YAML file has, each error naming the key.
#include "launch/request_json.h"

#include <algorithm>

#include "common/config.h"
#include "common/errors.h"

namespace llava {

std::string shown(const nlohmann::json& value) {
  std::string text = json_text(value);
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return text;
}

namespace {

// A JSON integer in [lo, hi]: 2.5, "3", 1e30 or 2^64 are refused, never cast.
long long whole(const std::string& key, const nlohmann::json& value, long long lo, long long hi) {
  if (!value.is_number_integer()) {
    throw RequestError(key + ": expected a whole number, got " + shown(value));
  }
  // Past 2^63 - 1 a JSON integer is unsigned only: above every range here.
  const bool fits = value.is_number_unsigned()
                        ? value.get<uint64_t>() <= static_cast<uint64_t>(hi) &&
                              in_range(static_cast<long long>(value.get<uint64_t>()), lo, hi)
                        : in_range<long long>(value.get<int64_t>(), lo, hi);
  if (!fits) {
    throw RequestError(key + ": " + shown(value) + " is out of range " + range_text(lo, hi));
  }
  return value.is_number_unsigned() ? static_cast<long long>(value.get<uint64_t>())
                                    : value.get<int64_t>();
}

// A JSON number in [lo, hi] ((lo, hi] when lo_open).
double real(const std::string& key, const nlohmann::json& value, double lo, double hi,
            bool lo_open = false) {
  if (!value.is_number()) throw RequestError(key + ": expected a number, got " + shown(value));
  const double number = value.get<double>();
  if (!in_range(number, lo, hi, lo_open)) {
    throw RequestError(key + ": " + shown(value) + " is out of range " +
                       range_text(lo, hi, lo_open));
  }
  return number;
}

}  // namespace

std::string json_text(const nlohmann::json& value) {
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string string_value(const std::string& key, const nlohmann::json& value) {
  if (!value.is_string()) throw RequestError(key + ": expected a string, got " + shown(value));
  return value.get<std::string>();
}

void apply_sampling(const std::string& key, const nlohmann::json& value, GenerationSection& g) {
  using L = GenerationLimits;
  if (key == "max_new_tokens") {
    g.max_new_tokens = static_cast<int>(whole(key, value, 1, L::kMaxNewTokens));
  } else if (key == "temperature") {
    g.temperature = real(key, value, 0.0, L::kTemperature);
  } else if (key == "top_k") {
    g.top_k = static_cast<int>(whole(key, value, 0, L::kTopK));
  } else if (key == "top_p") {
    g.top_p = real(key, value, 0.0, 1.0, /*lo_open=*/true);
  } else if (key == "repetition_penalty") {
    g.repetition_penalty = real(key, value, 0.0, L::kRepetitionPenalty, /*lo_open=*/true);
  } else if (key == "seed") {
    // Any 64-bit seed (a file's seed is at most 2^63 - 1, as YAML integers are read signed).
    if (!value.is_number_unsigned() && !(value.is_number_integer() && value.get<int64_t>() >= 0)) {
      throw RequestError("seed: expected a whole number from 0 to 2^64 - 1, got " + shown(value));
    }
    g.seed = value.get<uint64_t>();
  } else if (key == "stop") {
    if (value.is_string()) {
      g.stop = {string_value(key, value)};
    } else if (value.is_array() && std::all_of(value.begin(), value.end(),
                                               [](const auto& v) { return v.is_string(); })) {
      g.stop = value.get<std::vector<std::string>>();
    } else {
      throw RequestError("stop: expected a string or a list of strings, got " + shown(value));
    }
    const std::string problem = stop_strings_problem(g.stop);
    if (!problem.empty()) throw RequestError("stop: " + problem);
  } else {
    throw RequestError("unknown key '" + key + "'");
  }
}

void parse_json_request(const std::string& text, bool batch_line, JsonRequest& out) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw RequestError(std::string("not a valid request (") + e.what() + ")");
  }
  if (!j.is_object()) throw RequestError("a request must be a JSON object, got " + shown(j));
  if (auto id = j.find("id"); id != j.end()) out.id = *id;
  for (const auto& [key, value] : j.items()) {
    if (key == "id") continue;
    if (key == "prompt") {
      out.prompt = string_value(key, value);
    } else if (batch_line && (key == "image" || key == "images")) {
      if (value.is_array()) {
        for (const auto& path : value) out.image_paths.push_back(string_value(key, path));
      } else {
        out.image_paths.push_back(string_value(key, value));
      }
    } else {
      apply_sampling(key, value, out.generation);
    }
  }
  if (batch_line && !j.contains("prompt")) throw RequestError("no \"prompt\"");
}

}  // namespace llava
