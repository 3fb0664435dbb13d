// OpenAI request parsing and response bodies. Sampling keys are checked by apply_sampling,
// with the ranges the YAML file has; every error names the request's own field.
#include "launch/openai_api.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <set>

#include "common/command_line.h"
#include "common/config.h"
#include "common/errors.h"
#include "common/json_depth.h"
#include "common/utf8.h"
#include "launch/openai_tools.h"
#include "launch/request_json.h"

namespace llava {
namespace {

// One sampling key through apply_sampling; its error names `field` (the request's name).
void sampling(const std::string& field, const std::string& key, const nlohmann::json& value,
              GenerationSection& g) {
  if (value.is_null()) return;  // null: the default, as OpenAI's clients send it
  try {
    apply_sampling(key, value, g);
  } catch (const RequestError& e) {
    std::string message = e.what();
    if (message.rfind(key, 0) == 0) message = field + message.substr(key.size());
    throw ApiError(400, message, field);
  }
}

// top_logprobs (chat) and logprobs (completions): request_json's check, its error a 400
// naming the field.
int api_logprobs_count(const std::string& field, const nlohmann::json& value) {
  try {
    return logprobs_count(field, value);
  } catch (const RequestError& e) {
    throw ApiError(400, e.what(), field);
  }
}

nlohmann::json parse_object(const std::string& body) {
  nlohmann::json j;
  try {
    j = parse_json(body);
    keep_schema_order(body, j, {"response_format"});
  } catch (const nlohmann::json::exception& e) {
    throw ApiError(400, std::string("the body is not valid JSON (") + e.what() + ")");
  }
  if (!j.is_object()) throw ApiError(400, "the body must be a JSON object, got " + shown(j));
  return j;
}

// OpenAI's keys for what this server does not do, whose default value (or null, which some
// languages' SDKs send for every unset key) asks for nothing: accepted in that form only.
// (Chat reads tools, tool_choice and parallel_tool_calls itself; completions has none.)
bool default_only_key(const std::string& key, const nlohmann::json& value) {
  static const std::set<std::string> kKeys = {"metadata",    "tools",         "functions",
                                              "tool_choice", "function_call", "parallel_tool_calls",
                                              "store",       "service_tier",  "modalities"};
  if (!kKeys.count(key)) return false;
  const bool is_default =
      value.is_null() || (key == "metadata" && value.is_object() && value.empty()) ||
      ((key == "tools" || key == "functions") && value.is_array() && value.empty()) ||
      ((key == "tool_choice" || key == "function_call") && value == "none") ||
      (key == "parallel_tool_calls" && value.is_boolean()) ||  // moot without tools
      (key == "store" && value == false) ||
      (key == "service_tier" && (value == "auto" || value == "default")) ||
      (key == "modalities" && value == nlohmann::json::array({"text"}));
  if (!is_default) {
    throw ApiError(400, "'" + key + "': not supported (only its default), got " + shown(value),
                   key);
  }
  return true;
}

// OpenAI's logit_bias: {"token id": bias from -100 to 100}; null or {} is none. The ids are
// checked against the model's vocabulary where it is known (the coordinator).
std::vector<std::pair<int32_t, float>> logit_bias(const nlohmann::json& value) {
  const std::string key = "logit_bias";
  std::vector<std::pair<int32_t, float>> out;
  if (value.is_null()) return out;
  if (!value.is_object()) {
    throw ApiError(400, key + ": expected an object of token ids and numbers, got " + shown(value),
                   key);
  }
  if (value.size() > SamplingLimits::kLogitBiasIds) {
    throw ApiError(400,
                   key + ": " + std::to_string(value.size()) + " token ids; at most " +
                       std::to_string(SamplingLimits::kLogitBiasIds),
                   key);
  }
  for (const auto& [id, bias] : value.items()) {
    long long token = 0;
    try {
      token = whole_number(id, 0, INT32_MAX);
    } catch (const std::invalid_argument&) {
      throw ApiError(400, key + ": " + shown(nlohmann::json(id)) + " is not a token id", key);
    }
    const double limit = SamplingLimits::kLogitBias;
    if (!bias.is_number() || !in_range(bias.get<double>(), -limit, limit)) {
      throw ApiError(
          400, key + "[" + id + "]: expected a number from -100 to 100, got " + shown(bias), key);
    }
    out.emplace_back(static_cast<int32_t>(token), static_cast<float>(bias.get<double>()));
  }
  return out;
}

// Keys shared by both endpoints; false if `key` is not one of them.
bool common_key(const std::string& key, const nlohmann::json& value, CompletionRequest& out) {
  if (default_only_key(key, value)) return true;
  // OpenAI's names for max_new_tokens; the other sampling keys keep their own (vLLM's).
  if (key == "max_tokens" || key == "max_completion_tokens") {
    sampling(key, "max_new_tokens", value, out.generation);
  } else if (key != "max_new_tokens" && is_sampling_key(key)) {
    sampling(key, key, value, out.generation);
  } else if (key == "model") {
    string_field(key, value);  // one model is served, whatever the name
  } else if (key == "user") {
    // ignored, as the issue allows
  } else if (key == "stream") {
    out.stream = boolean_field(key, value);
  } else if (key == "ignore_eos") {  // vLLM's: its benchmarks send it, false by default
    out.generation.ignore_eos = boolean_field(key, value);
  } else if (key == "logit_bias") {
    out.generation.logit_bias = logit_bias(value);
  } else if (key == "return_tokens_as_token_ids") {  // vLLM's
    out.tokens_as_ids = !value.is_null() && boolean_field(key, value);
  } else if (key == "stream_options") {
    if (value.is_null()) return true;
    if (!value.is_object())
      throw ApiError(400, "stream_options: expected an object, got " + shown(value), key);
    for (const auto& [k, v] : value.items()) {
      if (k != "include_usage") {
        throw ApiError(400, "stream_options." + k + ": unsupported parameter",
                       "stream_options." + k);
      }
      out.include_usage = boolean_field("stream_options.include_usage", v);
    }
  } else if (key == "n") {  // choices, each sampled on its own (a request each)
    if (value.is_null()) return true;
    if (!value.is_number_integer() || value.get<int64_t>() < 1 ||
        value.get<int64_t>() > kMaxChoices) {
      throw ApiError(400,
                     "n: expected a whole number from 1 to " + std::to_string(kMaxChoices) +
                         ", got " + shown(value),
                     key);
    }
    out.choices = static_cast<int>(value.get<int64_t>());
  } else {
    return false;
  }
  return true;
}

// Reads `part` (its strings move out: an image's data URI is not held twice).
ChatPart content_part(const std::string& where, nlohmann::json& part) {
  if (!part.is_object())
    throw ApiError(400, where + ": expected an object, got " + shown(part), where);
  auto type = part.find("type");
  if (type == part.end() || !type->is_string()) {
    throw ApiError(400, where + ".type: expected \"text\" or \"image_url\"", where + ".type");
  }
  ChatPart out;
  out.param = where;
  for (const auto& [k, v] : part.items()) {
    if (k != "type" && k != "text" && k != "image_url") {
      throw ApiError(400, where + "." + k + ": unsupported field", where + "." + k);
    }
  }
  if (*type == "text") {
    auto text = part.find("text");
    if (text == part.end()) throw ApiError(400, where + ".text: missing", where + ".text");
    out.text = string_field(where + ".text", *text);
  } else if (*type == "image_url") {
    auto image = part.find("image_url");
    if (image == part.end())
      throw ApiError(400, where + ".image_url: missing", where + ".image_url");
    out.image = true;
    if (image->is_string()) {
      out.url = std::move(image->get_ref<std::string&>());
    } else if (image->is_object() && image->contains("url")) {
      nlohmann::json& url = (*image)["url"];
      if (!url.is_string()) string_field(where + ".image_url.url", url);  // the error naming it
      out.url = std::move(url.get_ref<std::string&>());
      for (const auto& [k, v] : image->items()) {
        if (k != "url" && k != "detail") {
          throw ApiError(400, where + ".image_url." + k + ": unsupported field",
                         where + ".image_url." + k);
        }
      }
    } else {
      throw ApiError(400, where + ".image_url: expected {\"url\": ...}, got " + shown(*image),
                     where + ".image_url");
    }
  } else {
    throw ApiError(400,
                   where + ".type: '" + type->get<std::string>() +
                       "' is not supported (expected \"text\" or \"image_url\")",
                   where + ".type");
  }
  return out;
}

ChatMessage chat_message(const std::string& where, nlohmann::json& m) {
  if (!m.is_object()) throw ApiError(400, where + ": expected an object, got " + shown(m), where);
  ChatMessage out;
  auto role = m.find("role");
  if (role == m.end()) throw ApiError(400, where + ".role: missing", where + ".role");
  out.role = string_field(where + ".role", *role);
  if (out.role == "developer") out.role = "system";  // OpenAI's newer name for it
  if (out.role != "system" && out.role != "user" && out.role != "assistant" && out.role != "tool") {
    throw ApiError(
        400,
        where + ".role: unknown role '" + out.role + "' (expected system, user, assistant or tool)",
        where + ".role");
  }
  for (const auto& [k, v] : m.items()) {
    const bool known = k == "role" || k == "content" || k == "name" ||
                       (k == "tool_calls" && out.role == "assistant") ||
                       (k == "tool_call_id" && out.role == "tool");
    if (!known) throw ApiError(400, where + "." + k + ": unsupported field", where + "." + k);
  }
  if (out.role == "assistant" && m.contains("tool_calls") && !m["tool_calls"].is_null()) {
    out.tool_calls = earlier_tool_calls(where + ".tool_calls", m["tool_calls"]);
  }
  if (out.role == "tool") {
    auto id = m.find("tool_call_id");
    if (id == m.end())
      throw ApiError(400, where + ".tool_call_id: missing", where + ".tool_call_id");
    out.tool_call_id = string_field(where + ".tool_call_id", *id);
  }
  auto content = m.find("content");
  if (content == m.end() || content->is_null()) {
    // An assistant's turn that only called tools has no content.
    if (!out.tool_calls.is_null()) return out;
    throw ApiError(400, where + ".content: missing", where + ".content");
  }
  if (content->is_string()) {
    out.content_is_string = true;
    out.parts.push_back({false, content->get<std::string>(), "", where + ".content"});
  } else if (content->is_array()) {
    for (size_t i = 0; i < content->size(); ++i) {
      out.parts.push_back(
          content_part(where + ".content[" + std::to_string(i) + "]", (*content)[i]));
      if (out.parts.back().image && out.role != "user") {
        throw ApiError(400, out.parts.back().param + ": images go in user messages only",
                       out.parts.back().param);
      }
    }
  } else {
    throw ApiError(400,
                   where + ".content: expected a string or a list of parts, got " + shown(*content),
                   where + ".content");
  }
  return out;
}

}  // namespace

const char* error_type(int status) {
  switch (status) {
    case 400:
    case 404:
    case 405:
    case 413:
      return "invalid_request_error";
    case 401:
      return "authentication_error";
    case 429:
      return "rate_limit_error";
    case 503:
      return "service_unavailable";
    default:
      return "server_error";
  }
}

nlohmann::json error_body(int status, const std::string& message, const std::string& param,
                          const std::string& code) {
  nlohmann::json error = {{"message", message},
                          {"type", error_type(status)},
                          {"param", param.empty() ? nlohmann::json() : nlohmann::json(param)},
                          {"code", code.empty() ? nlohmann::json() : nlohmann::json(code)}};
  return {{"error", error}};
}

bool boolean_field(const std::string& field, const nlohmann::json& value) {
  if (value.is_null()) return false;
  if (!value.is_boolean())
    throw ApiError(400, field + ": expected true or false, got " + shown(value), field);
  return value.get<bool>();
}

std::string string_field(const std::string& field, const nlohmann::json& value) {
  if (!value.is_string())
    throw ApiError(400, field + ": expected a string, got " + shown(value), field);
  return value.get<std::string>();
}

CompletionRequest parse_chat_request(const std::string& body, const GenerationSection& defaults,
                                     int max_images) {
  nlohmann::json j = parse_object(body);  // not const: the images' URIs move out
  CompletionRequest out;
  out.chat = true;
  out.generation = defaults;
  bool have_messages = false;
  bool chat_logprobs = false;
  std::optional<int> top_logprobs;
  nlohmann::json tools, tool_choice, parallel_tool_calls;
  for (auto& [key, value] : j.items()) {
    if (key == "tools") {
      tools = value;
      continue;
    }
    if (key == "tool_choice" || key == "parallel_tool_calls") {
      (key == "tool_choice" ? tool_choice : parallel_tool_calls) = value;
      continue;
    }
    if (common_key(key, value, out)) continue;
    if (key == "messages") {
      if (!value.is_array() || value.empty()) {
        throw ApiError(400, "messages: expected a non-empty list of messages, got " + shown(value),
                       key);
      }
      for (size_t i = 0; i < value.size(); ++i) {
        out.messages.push_back(chat_message("messages[" + std::to_string(i) + "]", value[i]));
      }
      have_messages = true;
    } else if (key == "logprobs") {
      chat_logprobs = boolean_field(key, value);
    } else if (key == "top_logprobs") {
      if (!value.is_null()) top_logprobs = api_logprobs_count(key, value);
    } else {
      throw ApiError(400, "'" + key + "': unsupported parameter", key);
    }
  }
  if (!have_messages) throw ApiError(400, "messages: missing", "messages");
  read_tool_choice(body, tools, tool_choice, parallel_tool_calls, out);
  if (tools.is_array() && !tools.empty()) out.tools = tools;
  if (top_logprobs && !chat_logprobs) {
    throw ApiError(400, "top_logprobs: only with \"logprobs\": true", "top_logprobs");
  }
  out.generation.logprobs = chat_logprobs ? top_logprobs.value_or(0) : -1;
  for (const auto& m : out.messages) {
    for (const auto& p : m.parts) out.images += p.image;
  }
  if (out.images > max_images) {
    throw ApiError(400,
                   std::to_string(out.images) + " images; at most " + std::to_string(max_images) +
                       " per request (server.max_images)",
                   "messages");
  }
  if (!out.stream && out.include_usage) {
    throw ApiError(400, "stream_options: only with \"stream\": true", "stream_options");
  }
  return out;
}

namespace {

// A /v1/completions prompt: a string or a list of token ids, alone or as the one item of a
// list (OpenAI takes a list of prompts; a request here answers one).
void read_prompt(const nlohmann::json& value, CompletionRequest& out) {
  const nlohmann::json* one = &value;
  if (value.is_array() && !value.empty() && (value[0].is_string() || value[0].is_array())) {
    if (value.size() != 1) {
      throw ApiError(400,
                     "prompt: " + std::to_string(value.size()) + " prompts; a request takes one",
                     "prompt");
    }
    one = &value[0];
  }
  if (one->is_string()) {
    out.prompt = one->get<std::string>();
    return;
  }
  if (!one->is_array() || one->empty()) {
    throw ApiError(400, "prompt: expected a string or a list of token ids, got " + shown(value),
                   "prompt");
  }
  std::vector<int32_t> ids;
  for (size_t i = 0; i < one->size(); ++i) {
    const nlohmann::json& id = (*one)[i];
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
      throw ApiError(400,
                     "prompt[" + std::to_string(i) + "]: expected a token id, got " + shown(id),
                     "prompt");
    }
    ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
  }
  out.prompt_ids = std::move(ids);
}

}  // namespace

CompletionRequest parse_completion_request(const std::string& body,
                                           const GenerationSection& defaults) {
  const nlohmann::json j = parse_object(body);
  CompletionRequest out;
  out.chat = false;
  out.generation = defaults;
  bool have_prompt = false, no_tokens = false;
  for (const auto& [key, value] : j.items()) {
    if ((key == "max_tokens" || key == "max_completion_tokens") && value.is_number_integer() &&
        value.get<int64_t>() == 0) {
      no_tokens = true;  // only with echo: the prompt's logprobs alone
      continue;
    }
    if (common_key(key, value, out)) continue;
    if (key == "prompt") {
      read_prompt(value, out);
      have_prompt = true;
    } else if (key == "logprobs") {  // how many alternatives with each token's own
      if (!value.is_null()) out.generation.logprobs = api_logprobs_count(key, value);
    } else if (key == "echo") {
      out.echo = boolean_field(key, value);
    } else if (key == "suffix") {  // insertion: not done; null or "" asks for none
      if (!value.is_null() && value != "") {
        throw ApiError(400, "suffix: not supported, got " + shown(value), key);
      }
    } else if (key == "best_of") {
      if (!value.is_null() && !(value.is_number_integer() && value.get<int64_t>() == 1)) {
        throw ApiError(400, "best_of: only 1 is supported", key);
      }
    } else {
      throw ApiError(400, "'" + key + "': unsupported parameter", key);
    }
  }
  if (!have_prompt) throw ApiError(400, "prompt: missing", "prompt");
  if (!out.stream && out.include_usage) {
    throw ApiError(400, "stream_options: only with \"stream\": true", "stream_options");
  }
  if (no_tokens) {
    if (!out.echo) {
      throw ApiError(400, "max_tokens: 0 only with \"echo\": true (else nothing is answered)",
                     "max_tokens");
    }
    out.generation.max_new_tokens = 0;
  }
  out.generation.prompt_logprobs = out.echo && out.generation.logprobs >= 0;
  return out;
}

std::string finish_reason(const std::string& finish) {
  return finish == "length" || finish == "tool_calls" ? finish : "stop";
}

nlohmann::json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

namespace {

// OpenAI's floor for a log-probability JSON cannot carry (-inf: a banned token).
double finite_logprob(float logprob) {
  return std::max(static_cast<double>(logprob), -9999.0);
}

nlohmann::json utf8_bytes(const std::string& text) {
  nlohmann::json out = nlohmann::json::array();
  for (char c : text) out.push_back(static_cast<unsigned char>(c));
  return out;
}

// Characters (code points) a token's bytes add: its bytes that start one.
size_t characters(const std::string& bytes) {
  size_t n = 0;
  for (char c : bytes) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

}  // namespace

namespace {

// Where `token` lies in `text` at `cursor` (characters), moving the cursor past it.
size_t place(const std::string& text, TextCursor& cursor, const TokenLogprob& token) {
  const size_t at = cursor.characters;
  if (!token.in_text) return at;
  const std::string& t = token.text;
  size_t take = 0;
  if (text.compare(cursor.byte, t.size(), t) == 0) {
    take = t.size();
  } else if (!t.empty() && t[0] == ' ' &&
             text.compare(cursor.byte, t.size() - 1, t, 1, std::string::npos) == 0) {
    take = t.size() - 1;  // the text's start dropped its space
  } else {  // not as the text shows it (a byte of no character, U+FFFD there): as many bytes
    take = std::min(t.size(), text.size() - cursor.byte);
  }
  cursor.characters += characters(text.substr(cursor.byte, take));
  cursor.byte += take;
  return at;
}

}  // namespace

nlohmann::json logprobs_json(bool chat, const std::vector<TokenLogprob>& logprobs,
                             const std::string& text, TextCursor& cursor, bool as_ids) {
  // A token as the client sees it: its text (or its id), and chat's bytes of that.
  auto name = [as_ids](int32_t id, const std::string& piece) {
    return as_ids ? "token_id:" + std::to_string(id) : piece;
  };
  if (chat) {
    nlohmann::json content = nlohmann::json::array();
    for (const auto& token : logprobs) {
      nlohmann::json top = nlohmann::json::array();
      for (const auto& other : token.top) {
        const std::string named = name(other.id, other.text);
        top.push_back({{"token", utf8_lossy(named)},
                       {"logprob", finite_logprob(other.logprob)},
                       {"bytes", utf8_bytes(named)}});
      }
      const std::string named = name(token.id, token.text);
      content.push_back({{"token", utf8_lossy(named)},
                         {"logprob", finite_logprob(token.logprob)},
                         {"bytes", utf8_bytes(named)},
                         {"top_logprobs", std::move(top)}});
    }
    return {{"content", std::move(content)}, {"refusal", nullptr}};
  }
  // The legacy form: parallel lists; each token's alternatives with the token itself.
  nlohmann::json tokens = nlohmann::json::array(), token_logprobs = nlohmann::json::array(),
                 top_logprobs = nlohmann::json::array(), offsets = nlohmann::json::array();
  for (const auto& token : logprobs) {
    const std::string shown = utf8_lossy(name(token.id, token.text));
    tokens.push_back(shown);
    offsets.push_back(place(text, cursor, token));
    if (std::isnan(token.logprob)) {  // a prompt's first token: nothing came before it
      token_logprobs.push_back(nullptr);
      top_logprobs.push_back(nullptr);
      continue;
    }
    token_logprobs.push_back(finite_logprob(token.logprob));
    nlohmann::json top = nlohmann::json::object();
    for (const auto& other : token.top)
      top[utf8_lossy(name(other.id, other.text))] = finite_logprob(other.logprob);
    top[shown] = finite_logprob(token.logprob);  // its own, where an alternative reads the same
    top_logprobs.push_back(std::move(top));
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(token_logprobs)},
          {"top_logprobs", std::move(top_logprobs)},
          {"text_offset", std::move(offsets)}};
}

nlohmann::json completion_body(bool chat, const std::string& id, int64_t created,
                               const std::string& model, const std::vector<ChoiceAnswer>& answers,
                               const Usage& usage) {
  nlohmann::json choices = nlohmann::json::array();
  for (size_t index = 0; index < answers.size(); ++index) {
    const ChoiceAnswer& answer = answers[index];
    nlohmann::json choice = {{"index", index},
                             {"finish_reason", finish_reason(answer.finish)},
                             {"logprobs", answer.logprobs}};
    if (chat && !answer.tool_calls.is_null()) {
      choice["message"] = {
          {"role", "assistant"}, {"content", nullptr}, {"tool_calls", answer.tool_calls}};
      choice["finish_reason"] = "tool_calls";
    } else if (chat) {
      choice["message"] = {{"role", "assistant"}, {"content", answer.text}};
    } else {
      choice["text"] = answer.text;
    }
    choices.push_back(std::move(choice));
  }
  return {{"id", id},
          {"object", chat ? "chat.completion" : "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", std::move(choices)},
          {"usage", usage_json(usage)}};
}

nlohmann::json chunk_body(bool chat, const std::string& id, int64_t created,
                          const std::string& model, const std::string& text, bool role,
                          const std::string& finish, nlohmann::json logprobs, int index,
                          nlohmann::json tool_calls) {
  nlohmann::json choice = {
      {"index", index},
      {"logprobs", std::move(logprobs)},
      {"finish_reason", finish.empty() ? nlohmann::json() : nlohmann::json(finish_reason(finish))}};
  if (chat) {
    nlohmann::json delta = nlohmann::json::object();
    if (role) delta["role"] = "assistant";
    if (!tool_calls.is_null()) {
      delta["tool_calls"] = std::move(tool_calls);
    } else if (!text.empty() || role) {
      delta["content"] = text;
    }
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
  }
  return {{"id", id},
          {"object", chat ? "chat.completion.chunk" : "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", {choice}}};
}

nlohmann::json usage_chunk_body(bool chat, const std::string& id, int64_t created,
                                const std::string& model, const Usage& usage) {
  return {{"id", id},
          {"object", chat ? "chat.completion.chunk" : "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", nlohmann::json::array()},
          {"usage", usage_json(usage)}};
}

std::string sse_event(const nlohmann::json& body) {
  return "data: " + json_text(body) + "\n\n";
}
std::string sse_done() {
  return "data: [DONE]\n\n";
}

}  // namespace llava
