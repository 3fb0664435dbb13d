// OpenAI tool calling (openai_tools.h): a request's tools and tool_choice read into the
// schema the answer is held to, and an answer's text read back into tool_calls.
#include "launch/openai_tools.h"

#include <algorithm>
#include <cctype>
#include <random>
#include <utility>
#include <vector>

#include "common/json_depth.h"
#include "common/json_schema.h"
#include "launch/request_json.h"

namespace llava {
namespace {

// OpenAI's rule for a function's name: 1 to 64 letters, digits, '_' and '-'.
bool function_name(const std::string& name) {
  return !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
  });
}

// The request's tools: each {"type": "function", "function": {"name", "description",
// "parameters", "strict"}}, the names different. Returns each function's name and its
// parameters schema in the order written (read again from `body`: nlohmann's objects sort
// their keys), compiled as the worker will compile it; no parameters: the empty object's.
std::vector<std::pair<std::string, nlohmann::json>> read_tools(const std::string& body,
                                                               const nlohmann::json& tools) {
  if (!tools.is_array() || tools.size() > static_cast<size_t>(kMaxTools)) {
    throw ApiError(400,
                   "tools: expected a list of at most " + std::to_string(kMaxTools) +
                       " tools, got " + shown(tools),
                   "tools");
  }
  std::vector<std::pair<std::string, nlohmann::json>> out;
  for (size_t i = 0; i < tools.size(); ++i) {
    const std::string where = "tools[" + std::to_string(i) + "]";
    const nlohmann::json& tool = tools[i];
    if (!tool.is_object() || !tool.contains("type") || tool["type"] != "function" ||
        !tool.contains("function") || !tool["function"].is_object()) {
      throw ApiError(
          400,
          where + ": expected {\"type\": \"function\", \"function\": {\"name\": ...}}, got " +
              shown(tool),
          where);
    }
    for (const auto& [key, item] : tool.items()) {
      if (key != "type" && key != "function")
        throw ApiError(400, where + "." + key + ": unsupported field", where + "." + key);
    }
    const nlohmann::json& function = tool["function"];
    for (const auto& [key, item] : function.items()) {
      const bool known = (key == "name") || (key == "description" && item.is_string()) ||
                         (key == "strict" && (item.is_boolean() || item.is_null())) ||
                         key == "parameters";
      if (!known) {
        throw ApiError(400, where + ".function." + key + ": unsupported field (or not of its type)",
                       where + ".function." + key);
      }
    }
    const std::string name =
        function.contains("name") ? string_field(where + ".function.name", function["name"]) : "";
    if (!function_name(name)) {
      throw ApiError(400,
                     where + ".function.name: expected 1 to 64 letters, digits, '_' or '-', got " +
                         shown(function.value("name", nlohmann::json())),
                     where + ".function.name");
    }
    for (const auto& [known, schema] : out) {
      if (known == name) {
        throw ApiError(400, where + ".function.name: '" + name + "' names another tool too",
                       where + ".function.name");
      }
    }
    nlohmann::json parameters = {{"type", "object"},
                                 {"properties", nlohmann::json::object()},
                                 {"additionalProperties", false}};
    if (function.contains("parameters") && !function["parameters"].is_null()) {
      parameters =
          with_property_order(body, {"tools", std::to_string(i), "function", "parameters"});
    }
    try {
      JsonSchema::compile(parameters);
    } catch (const JsonSchemaError& e) {
      throw ApiError(400, where + ".function.parameters: " + e.what(),
                     where + ".function.parameters");
    }
    out.emplace_back(name, std::move(parameters));
  }
  return out;
}

// The schema a tool_choice holds the answer to (ToolUse's comment).
nlohmann::json tool_schema(const std::vector<std::pair<std::string, nlohmann::json>>& tools,
                           ToolUse use, const std::string& name, bool parallel) {
  if (use == ToolUse::kNamed) {
    for (const auto& [tool, parameters] : tools) {
      if (tool == name) return parameters;
    }
  }
  nlohmann::json branches = nlohmann::json::array();
  for (const auto& [tool, parameters] : tools) {
    branches.push_back({{"type", "object"},
                        {"properties", {{"name", {{"const", tool}}}, {"parameters", parameters}}},
                        {"required", {"name", "parameters"}},
                        {kPropertyOrderKey, {"name", "parameters"}}});
  }
  nlohmann::json calls = {
      {"type", "array"}, {"minItems", 1}, {"items", {{"anyOf", std::move(branches)}}}};
  if (!parallel) calls["maxItems"] = 1;
  return {{"type", "object"},
          {"properties", {{"tool_calls", std::move(calls)}}},
          {"required", {"tool_calls"}},
          {kPropertyOrderKey, {"tool_calls"}}};
}

}  // namespace

// An assistant message's earlier calls: [{"id", "type": "function", "function": {"name",
// "arguments"}}], checked as OpenAI checks them, for the chat template.
nlohmann::json earlier_tool_calls(const std::string& where, const nlohmann::json& calls) {
  if (!calls.is_array()) {
    throw ApiError(400, where + ": expected a list of calls, got " + shown(calls), where);
  }
  for (size_t i = 0; i < calls.size(); ++i) {
    const std::string at = where + "[" + std::to_string(i) + "]";
    const nlohmann::json& call = calls[i];
    const auto function = call.is_object() ? call.find("function") : call.end();
    const bool ok = call.is_object() && call.contains("id") && call["id"].is_string() &&
                    call.contains("type") && call["type"] == "function" && function != call.end() &&
                    function->is_object() && function->contains("name") &&
                    (*function)["name"].is_string() && function->contains("arguments") &&
                    (*function)["arguments"].is_string();
    if (!ok) {
      throw ApiError(400,
                     at +
                         ": expected {\"id\": ..., \"type\": \"function\", \"function\": "
                         "{\"name\": ..., \"arguments\": \"...\"}}, got " +
                         shown(call),
                     at);
    }
  }
  return calls;
}

void read_tool_choice(const std::string& body, const nlohmann::json& tools,
                      const nlohmann::json& choice, const nlohmann::json& parallel,
                      CompletionRequest& out) {
  const auto functions = tools.is_null() ? std::vector<std::pair<std::string, nlohmann::json>>()
                                         : read_tools(body, tools);
  const bool several = parallel.is_null() || boolean_field("parallel_tool_calls", parallel);
  const std::string field = "tool_choice";
  if (choice.is_null() || choice == "none") return;
  if (choice == "auto") {
    throw ApiError(400,
                   "tool_choice: 'auto' needs a model with a tool-call format of its own, which "
                   "llava-pipe does not read; ask for \"required\" (one or more calls) or name a "
                   "function ({\"type\": \"function\", \"function\": {\"name\": ...}})",
                   field);
  }
  if (choice == "required") {
    out.tool_use = ToolUse::kRequired;
  } else if (choice.is_object() && choice.contains("type") && choice["type"] == "function" &&
             choice.contains("function") && choice["function"].is_object() &&
             choice["function"].contains("name") && choice["function"]["name"].is_string()) {
    out.tool_use = ToolUse::kNamed;
    out.tool_name = choice["function"]["name"].get<std::string>();
    if (std::none_of(functions.begin(), functions.end(),
                     [&](const auto& tool) { return tool.first == out.tool_name; })) {
      throw ApiError(400, "tool_choice: no tool is named '" + out.tool_name + "'", field);
    }
  } else {
    throw ApiError(400,
                   "tool_choice: expected \"none\", \"auto\", \"required\" or {\"type\": "
                   "\"function\", \"function\": {\"name\": ...}}, got " +
                       shown(choice),
                   field);
  }
  if (functions.empty()) throw ApiError(400, "tool_choice: the request has no tools", field);
  if (out.generation.json_object) {
    throw ApiError(400, "tool_choice: a tool call is JSON of its own; not with response_format",
                   field);
  }
  if (out.generation.min_tokens > 0) {
    throw ApiError(400,
                   "min_tokens cannot go with a tool call: the answer ends where its JSON ends",
                   "min_tokens");
  }
  std::string text = json_text(tool_schema(functions, out.tool_use, out.tool_name, several));
  if (text.size() > kMaxJsonSchemaBytes) {
    throw ApiError(400,
                   "tools: the calls' schema is " + std::to_string(text.size()) +
                       " bytes; at most " + std::to_string(kMaxJsonSchemaBytes),
                   "tools");
  }
  out.generation.json_object = true;
  out.generation.json_schema = std::move(text);
}

std::string tool_call_id() {
  static const char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  thread_local std::mt19937_64 draw{std::random_device{}()};
  std::string id = "call_";
  for (int i = 0; i < 24; ++i) id += kAlphabet[draw() % (sizeof(kAlphabet) - 1)];
  return id;
}

namespace {
bool space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}
}  // namespace

nlohmann::json ToolCallReader::take(std::string_view more) {
  nlohmann::json deltas = nlohmann::json::array();
  // Inside the parameters' value of a named call object: at the call's own level only after
  // its ':' (keys, the ':' and the ',' after the value are not the value).
  auto in_parameters = [&] {
    return in_call_ && call_key_ == "parameters" && !(open_.size() == 3 && key_next_);
  };
  for (const char c : more) {
    if (in_string_) {
      if (escape_) {
        escape_ = false;
      } else if (c == '\\') {
        escape_ = true;
      } else if (c == '"') {
        in_string_ = false;
        if (in_parameters()) argument(c, deltas);
        on_string_end(deltas);
        continue;
      }
      string_ += c;
      if (in_parameters()) argument(c, deltas);
      continue;
    }
    const bool deeper = open_.size() > 3;  // inside the parameters' own object or list
    switch (c) {
      case '"':
        in_string_ = true;
        string_.clear();
        if (in_parameters()) argument(c, deltas);
        break;
      case '{':
      case '[':
        if (in_parameters()) argument(c, deltas);
        open_.push_back(c);
        key_next_ = c == '{';
        if (open_.size() == 3 && c == '{' && open_[1] == '[' && open_[0] == '{' &&
            outer_key_ == "tool_calls") {
          in_call_ = true;  // a call object: its name and parameters to come
          named_ = false;
          call_key_.clear();
          pending_.clear();
        }
        break;
      case '}':
      case ']':
        if (open_.empty()) break;  // not JSON; the schema keeps it out of an answer
        open_.pop_back();
        key_next_ = false;
        if (open_.size() < 3) in_call_ = false;
        if (in_parameters()) argument(c, deltas);
        break;
      case ':':
        if (in_parameters()) argument(c, deltas);
        key_next_ = false;
        break;
      case ',':
        if (deeper && in_parameters()) argument(c, deltas);
        key_next_ = !open_.empty() && open_.back() == '{';
        break;
      default:
        if (!space(c) || deeper) {
          if (in_parameters()) argument(c, deltas);
        }
    }
  }
  return deltas;
}

void ToolCallReader::on_string_end(nlohmann::json& deltas) {
  std::string value = string_;
  try {
    value = nlohmann::json::parse("\"" + string_ + "\"").get<std::string>();
  } catch (const nlohmann::json::exception&) {
    // not a JSON string (the schema keeps it out of an answer): as written
  }
  if (open_.size() == 1 && key_next_) outer_key_ = std::move(value);
  if (open_.size() != 3 || !in_call_) return;
  if (key_next_) {
    call_key_ = std::move(value);
  } else if (call_key_ == "name" && !named_) {
    named_ = true;
    calls_.push_back({tool_call_id(), value, pending_});
    deltas.push_back({{"index", calls_.size() - 1},
                      {"id", calls_.back().id},
                      {"type", "function"},
                      {"function", {{"name", std::move(value)}, {"arguments", pending_}}}});
  }
}

void ToolCallReader::argument(char c, nlohmann::json& deltas) {
  if (!named_) {
    pending_ += c;
    return;
  }
  calls_.back().arguments += c;
  const size_t index = calls_.size() - 1;
  if (deltas.empty() || deltas.back()["index"] != index) {
    deltas.push_back({{"index", index}, {"function", {{"arguments", ""}}}});
  }
  deltas.back()["function"]["arguments"].get_ref<std::string&>() += c;
}

nlohmann::json tool_calls_of(const CompletionRequest& request, const std::string& text) {
  if (request.tool_use == ToolUse::kNone) return nullptr;
  nlohmann::ordered_json answer;
  try {
    if (json_nesting_past(text) != std::string_view::npos) return nullptr;
    answer = nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::exception&) {
    return nullptr;  // not whole: cut by max_tokens
  }
  auto call = [](const std::string& name, std::string arguments) {
    return nlohmann::json{{"id", tool_call_id()},
                          {"type", "function"},
                          {"function", {{"name", name}, {"arguments", std::move(arguments)}}}};
  };
  nlohmann::json calls = nlohmann::json::array();
  if (request.tool_use == ToolUse::kNamed) {  // the text as written, past its leading space
    if (!answer.is_object()) return nullptr;
    calls.push_back(call(request.tool_name, text.substr(text.find_first_not_of(" \t\n\r"))));
    return calls;
  }
  const auto list = answer.is_object() ? answer.find("tool_calls") : answer.end();
  if (list == answer.end() || !list->is_array() || list->empty()) return nullptr;
  for (const auto& item : *list) {
    if (!item.is_object() || !item.contains("name") || !item["name"].is_string() ||
        !item.contains("parameters")) {
      return nullptr;
    }
  }
  // Each call's parameters as written (what a stream's deltas add up to). Where the text
  // read is not the value parsed (a key written twice, which the schema keeps out of an
  // answer; the parser keeps the last), the value's JSON.
  ToolCallReader reader;
  reader.take(text);
  if (reader.calls().size() != list->size()) return nullptr;
  for (size_t i = 0; i < list->size(); ++i) {
    const ToolCallReader::Call& read = reader.calls()[i];
    const auto& parameters = (*list)[i]["parameters"];
    const bool as_written =
        read.name == (*list)[i]["name"] &&
        nlohmann::ordered_json::parse(read.arguments, nullptr, false) == parameters;
    calls.push_back(call((*list)[i]["name"].get<std::string>(),
                         as_written ? read.arguments : parameters.dump()));
  }
  return calls;
}

}  // namespace llava
