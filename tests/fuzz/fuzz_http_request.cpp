// libFuzzer target: an HTTP request body as /v1/chat/completions and /v1/completions read it
// (JSON, sampling keys, content parts, tools), its data: URIs decoded, and the conversation
// rendered through the config's template and a Jinja chat template. Refusals are ApiError or
// RequestError; anything else (a crash, a sanitizer report, another exception) is a finding.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/errors.h"
#include "coordinator/jinja.h"
#include "launch/openai_api.h"
#include "launch/openai_images.h"
#include "launch/openai_tools.h"

namespace {

const char* kLlavaTemplate =
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + "
    "': '}}"
    "{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}{% for content in message['content'] | selectattr('type', "
    "'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ "
    "'ASSISTANT:' }}{% endif %}";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace llava;
  const std::string body(reinterpret_cast<const char*>(data), size);
  static const ServerSection server;  // data: URIs only (file:// and http(s):// are off)
  static const JinjaTemplate jinja(kLlavaTemplate);
  try {
    parse_completion_request(body, GenerationSection{});
  } catch (const ApiError&) {
  }
  {  // the body as a "required" answer streamed in pieces (the first byte's size): the
     // pieces add up to the calls read, and to a whole answer's calls where it is one
    ToolCallReader reader;
    std::vector<std::string> arguments;
    const size_t piece = size == 0 ? 1 : 1 + data[0] % 16;
    for (size_t at = 0; at < body.size(); at += piece) {
      for (const auto& delta : reader.take(std::string_view(body).substr(at, piece))) {
        const size_t index = delta["index"];
        if (index > arguments.size()) __builtin_trap();
        if (index == arguments.size()) arguments.emplace_back();
        arguments[index] += delta["function"]["arguments"].get<std::string>();
      }
    }
    if (arguments.size() != reader.calls().size()) __builtin_trap();
    for (size_t i = 0; i < arguments.size(); ++i) {
      if (arguments[i] != reader.calls()[i].arguments) __builtin_trap();
    }
    CompletionRequest required;
    required.tool_use = ToolUse::kRequired;
    const nlohmann::json calls = tool_calls_of(required, body);
    // A whole answer: each call's arguments are JSON text of its parameters' value, the
    // streamed pieces' sum wherever that is it.
    const nlohmann::json answer =
        calls.is_null() ? nlohmann::json() : nlohmann::json::parse(body)["tool_calls"];
    for (size_t i = 0; !calls.is_null() && i < calls.size(); ++i) {
      const std::string whole = calls[i]["function"]["arguments"];
      if (nlohmann::json::parse(whole) != answer.at(i)["parameters"]) __builtin_trap();
      const bool streamed =
          nlohmann::json::parse(arguments.at(i), nullptr, false) == answer[i]["parameters"];
      if (streamed && whole != arguments[i]) __builtin_trap();
    }
  }
  try {
    const CompletionRequest request = parse_chat_request(body, GenerationSection{}, 8);
    tool_calls_of(request, body);  // the body read as an answer of its own tool_choice, too
    nlohmann::json messages = nlohmann::json::array();
    for (const auto& message : request.messages) {
      nlohmann::json content = nlohmann::json::array();
      for (const auto& part : message.parts) {
        if (part.image) {
          try {
            fetch_image(part.url, part.param, server);
          } catch (const ApiError&) {
          }
          content.push_back({{"type", "image"}});
        } else {
          content.push_back({{"type", "text"}, {"text", part.text}});
        }
      }
      messages.push_back({{"role", message.role}, {"content", content}});
    }
    try {
      jinja.render({{"messages", messages}, {"add_generation_prompt", true}});
    } catch (const RequestError&) {
    }
  } catch (const ApiError&) {
  } catch (const nlohmann::json::exception&) {
    // json_text / dump of bytes that are not UTF-8 is handled; any other is a finding
    throw;
  }
  return 0;
}
