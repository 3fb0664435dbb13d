// Requests as JSON (a client's, a batch line), and their sampling keys, validated with the
// ranges the YAML file has, each error naming the key.
#include "launch/request_json.h"

#include <algorithm>
#include <climits>
#include <optional>

#include "common/config.h"
#include "common/errors.h"
#include "common/json_depth.h"
#include "common/json_schema.h"
#include "common/sampling.h"
#include "common/utf8.h"

namespace llava {

namespace {

// A JSON integer in [lo, hi]: 2.5, "3", 1e30 or 2^64 are refused, never cast.
long long whole_number(const std::string& key, const nlohmann::json& value, long long lo, long long hi) {
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
double real_number(const std::string& key, const nlohmann::json& value, double lo, double hi,
            bool lo_open = false) {
  if (!value.is_number()) throw RequestError(key + ": expected a number, got " + shown(value));
  const double number = value.get<double>();
  if (!in_range(number, lo, hi, lo_open)) {
    throw RequestError(key + ": " + shown(value) + " is out of range " +
                       range_text(lo, hi, lo_open));
  }
  return number;
}

// One key of a request, for common/sampling's list of keys: answers for that key only.
class OneSamplingKey : public SamplingKeyReader {
 public:
  OneSamplingKey(const std::string& key, const nlohmann::json& value) : key_(key), value_(value) {}
  bool read() const { return read_; }

  std::optional<long long> whole(const std::string& key, long long lo, long long hi) override {
    if (!mine(key)) return std::nullopt;
    return whole_number(key, value_, lo, hi);
  }
  std::optional<double> real(const std::string& key, double lo, double hi, bool lo_open) override {
    if (!mine(key)) return std::nullopt;
    return real_number(key, value_, lo, hi, lo_open);
  }
  // Any 64-bit seed (a file's seed is at most 2^63 - 1, as YAML integers are read signed).
  std::optional<uint64_t> seed(const std::string& key) override {
    if (!mine(key)) return std::nullopt;
    if (!value_.is_number_unsigned() &&
        !(value_.is_number_integer() && value_.get<int64_t>() >= 0)) {
      throw RequestError(key + ": expected a whole number from 0 to 2^64 - 1, got " +
                         shown(value_));
    }
    return value_.get<uint64_t>();
  }

 private:
  bool mine(const std::string& key) {
    if (key != key_) return false;
    read_ = true;
    return true;
  }
  const std::string& key_;
  const nlohmann::json& value_;
  bool read_ = false;
};

}  // namespace

std::string string_value(const std::string& key, const nlohmann::json& value) {
  if (!value.is_string()) throw RequestError(key + ": expected a string, got " + shown(value));
  return value.get<std::string>();
}

namespace {

// OpenAI's response_format: {"type": "text"} (the default), {"type": "json_object"} (the
// answer is one JSON object), or {"type": "json_schema", "json_schema": {"name", "description",
// "schema", "strict"}} (one JSON object of that schema; common/json_schema.h says which
// keywords are followed: the others are refused rather than ignored).
void response_format(const nlohmann::json& value, GenerationSection& g) {
  const auto type = value.is_object() ? value.find("type") : value.end();
  const bool plain = type != value.end() && (*type == "text" || *type == "json_object");
  if (plain && value.size() == 1) {
    g.json_object = *type == "json_object";
    g.json_schema.clear();
    return;
  }
  if (type == value.end() || *type != "json_schema") {
    throw RequestError(
        "response_format: expected {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
        "{\"type\": \"json_schema\", \"json_schema\": {...}}, got " +
        shown(value));
  }
  for (const auto& [key, item] : value.items()) {
    if (key != "type" && key != "json_schema")
      throw RequestError("response_format: '" + key + "' is not a key of it");
  }
  const auto spec = value.find("json_schema");
  if (spec == value.end() || !spec->is_object()) {
    throw RequestError("response_format.json_schema: expected an object with the schema");
  }
  for (const auto& [key, item] : spec->items()) {
    const bool known = ((key == "name" || key == "description") && item.is_string()) ||
                       (key == "strict" && (item.is_boolean() || item.is_null())) ||
                       key == "schema";
    if (!known)
      throw RequestError("response_format.json_schema: '" + key +
                         "' is not a key of it (or not of its type)");
  }
  g.json_object = true;
  g.json_schema.clear();
  const auto schema = spec->find("schema");
  if (schema == spec->end()) return;  // any object
  std::string text = json_text(*schema);
  if (text.size() > kMaxJsonSchemaBytes) {
    throw RequestError("response_format.json_schema.schema: " + std::to_string(text.size()) +
                       " bytes; at most " + std::to_string(kMaxJsonSchemaBytes));
  }
  try {
    JsonSchema::compile(*schema);
  } catch (const JsonSchemaError& e) {
    throw RequestError(std::string("response_format: ") + e.what());
  }
  g.json_schema = std::move(text);
}

}  // namespace

void keep_schema_order(std::string_view text, nlohmann::json& value,
                       const std::vector<std::string>& at) {
  nlohmann::json* format = &value;
  for (const std::string& key : at) {
    if (!format->is_object() || !format->contains(key)) return;
    format = &(*format)[key];
  }
  if (!format->is_object() || !format->contains("json_schema")) return;
  nlohmann::json& spec = (*format)["json_schema"];
  if (!spec.is_object() || !spec.contains("schema")) return;
  std::vector<std::string> path = at;
  path.push_back("json_schema");
  path.push_back("schema");
  spec["schema"] = with_property_order(text, path);
}

bool is_sampling_key(const std::string& key) {
  static const std::vector<std::string> kKeys = sampling_keys();
  return key == "stop" || key == "response_format" || key == "stop_token_ids" ||
         std::find(kKeys.begin(), kKeys.end(), key) != kKeys.end();
}

void apply_sampling(const std::string& key, const nlohmann::json& value, GenerationSection& g) {
  if (key == "response_format") {
    response_format(value, g);
    return;
  }
  if (key == "stop_token_ids") {
    // vLLM's: ids that end the answer as the end-of-sequence token does (with ignore_eos
    // too); the coordinator checks them against the vocabulary.
    const bool ids =
        value.is_array() && value.size() <= kMaxStopTokenIds &&
        std::all_of(value.begin(), value.end(), [](const nlohmann::json& id) {
          return id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() <= INT32_MAX;
        });
    if (!ids) {
      throw RequestError("stop_token_ids: expected a list of at most " +
                         std::to_string(kMaxStopTokenIds) + " token ids, got " + shown(value));
    }
    g.stop_token_ids = value.get<std::vector<int32_t>>();
    return;
  }
  if (key != "stop") {
    OneSamplingKey reader(key, value);
    read_sampling_keys(reader, g);
    if (!reader.read()) throw RequestError("unknown key '" + key + "'");
    return;
  }
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
}

void add_sampling_flags(CLI::App& command, SamplingFlags& flags) {
  std::vector<std::string> keys = sampling_keys();
  keys.push_back("stop");
  keys.push_back("response_format");
  keys.push_back("stop_token_ids");
  for (const std::string& key : keys) {
    std::string flag = "--" + key;
    std::replace(flag.begin(), flag.end(), '_', '-');
    const bool stop = key == "stop", format = key == "response_format",
               ids = key == "stop_token_ids";
    add_checked_option(
        command, flag, stop || format || ids ? "JSON" : "VALUE",
        stop     ? "where the answer ends: a string or a JSON list of strings"
        : format ? "'{\"type\": \"json_object\"}': the answer is one JSON object (JSON mode); or "
                   "'{\"type\": \"json_schema\", \"json_schema\": {\"schema\": {...}}}': one of "
                   "that schema"
        : ids    ? "token ids that end the answer, as a JSON list: '[13]'"
                 : "generation." + key + " for this command (default: the config's)",
        [key, stop, &flags](const std::string& text) {
          nlohmann::json value;
          try {
            value = parse_json(text);
            if (key == "response_format") keep_schema_order(text, value, {});
          } catch (const nlohmann::json::exception&) {
            // A bare word is a string ("--stop END"); anything else that is not JSON is an error.
            if (!stop) throw RequestError("expected a number (or JSON), got '" + text + "'");
            value = text;
          }
          GenerationSection checked;
          apply_sampling(key, value, checked);
          flags.emplace_back(key, value);
        });
  }
}

void parse_json_request(const std::string& text, bool batch_line, JsonRequest& out) {
  nlohmann::json j;
  try {
    j = parse_json(text);
    keep_schema_order(text, j, {"response_format"});
  } catch (const nlohmann::json::exception& e) {
    throw RequestError(std::string("not a valid request (") + e.what() + ")");
  }
  if (!j.is_object()) throw RequestError("a request must be a JSON object, got " + shown(j));
  if (auto id = j.find("id"); id != j.end()) out.id = *id;
  for (const auto& [key, value] : j.items()) {
    if (key == "id") continue;
    if (key == "prompt") {
      out.prompt = string_value(key, value);
    } else if (key == "logprobs") {
      out.generation.logprobs = logprobs_count(key, value);
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

int logprobs_count(const std::string& key, const nlohmann::json& value) {
  const int most = SamplingLimits::kLogprobs;
  if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() > most) {
    throw RequestError(key + ": expected a whole number in [0, " + std::to_string(most) +
                       "], got " + shown(value));
  }
  return static_cast<int>(value.get<int64_t>());
}

nlohmann::json logprobs_array(const std::vector<TokenLogprob>& logprobs) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& token : logprobs) {
    nlohmann::json top = nlohmann::json::array();
    for (const auto& other : token.top) {
      top.push_back(
          {{"id", other.id}, {"text", utf8_lossy(other.text)}, {"logprob", other.logprob}});
    }
    out.push_back({{"id", token.id},
                   {"text", utf8_lossy(token.text)},
                   {"logprob", token.logprob},
                   {"top", std::move(top)}});
  }
  return out;
}

}  // namespace llava
