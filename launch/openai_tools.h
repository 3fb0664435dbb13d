// OpenAI tool calling on /v1/chat/completions, as vLLM does it for any model: the request's
// `tools` (for the chat template) and `tool_choice` read into the JSON schema the answer is
// held to (ToolUse, openai_api.h), earlier calls in a conversation checked, and an answer's
// text read back into OpenAI's `tool_calls`.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "launch/openai_api.h"

namespace llava {

// At most this many tools a request (a "required" answer's names are one enum).
constexpr int kMaxTools = 64;

// tools, tool_choice and parallel_tool_calls (each null where absent) of a chat body read
// into `out`: its tool_use and tool_name, and for a call the schema of its answer in
// out.generation (json_object and json_schema, as response_format's would be: a named
// function's parameters, or "required"'s {"tool_calls": [{"name", "parameters"}]} with each
// call told apart by its name). `body` is the request's text, read already as JSON: each
// function's parameters are read again from it in the order written. Throws ApiError (400)
// naming the field: a tool that is not a function, a bad or repeated name, a schema that
// cannot be followed, "auto", a named function that is not there, a call beside
// response_format or min_tokens.
void read_tool_choice(const std::string& body, const nlohmann::json& tools,
                      const nlohmann::json& tool_choice, const nlohmann::json& parallel,
                      CompletionRequest& out);

// An assistant message's earlier calls (its "tool_calls"), checked as OpenAI checks them:
// [{"id", "type": "function", "function": {"name", "arguments"}}]. `where` names the field.
nlohmann::json earlier_tool_calls(const std::string& where, const nlohmann::json& calls);

// A "required" answer, {"tool_calls": [{"name": N, "parameters": P}, ...]}, read as its text
// grows into OpenAI's streamed tool_calls deltas: a call's {"index", "id", "type", "function":
// {"name", "arguments": ""}} once its name is whole, then {"index", "function": {"arguments"}}
// with the text of its parameters as it comes (as written; the whitespace around the value
// left out). What the deltas add up to is what tool_calls_of gives for the whole text.
class ToolCallReader {
 public:
  // The deltas that `more` text completes (an empty array where none).
  nlohmann::json take(std::string_view more);
  // The calls whose name was whole: their ids, names and arguments so far.
  struct Call {
    std::string id, name, arguments;
  };
  const std::vector<Call>& calls() const { return calls_; }

 private:
  void on_string_end(nlohmann::json& deltas);
  void argument(char c, nlohmann::json& deltas);

  std::vector<char> open_;  // the '{' and '[' not closed yet
  bool in_string_ = false, escape_ = false, key_next_ = false;
  std::string string_;     // the string being read, without its quotes, as written
  std::string outer_key_;  // the top object's last key ("tool_calls")
  std::string call_key_;   // a call object's last key ("name", "parameters")
  bool in_call_ = false;   // inside a call object of the list under "tool_calls"
  bool named_ = false;     // that call's name was whole (its Call is calls_.back())
  std::string pending_;    // a call's arguments read before its name (not under our schema)
  std::vector<Call> calls_;
};

// The calls an answer's text makes under `request`'s tool_choice: [{"id", "type": "function",
// "function": {"name", "arguments"}}] (arguments: the JSON text of the call's arguments, in
// the order written), or null where the text is not a whole answer of the tool schema (cut by
// max_tokens) or the request asked for no call. Each call gets a fresh "call_..." id.
nlohmann::json tool_calls_of(const CompletionRequest& request, const std::string& text);
// One call's id: "call_" and 24 random letters and digits.
std::string tool_call_id();

}  // namespace llava
