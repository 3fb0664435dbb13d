// The OpenAI-compatible API's messages: chat and text completion requests parsed and
// validated (each error an ApiError with the HTTP status and the field it names), the
// response and stream-chunk bodies, the error envelope, and Server-Sent Events framing.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/config.h"
#include "coordinator/token_logprob.h"

namespace llava {

// An error answered with `status` and {"error": {"message", "type", "param", "code"}}.
struct ApiError : std::runtime_error {
  ApiError(int status, const std::string& message, std::string param = "", std::string code = "")
      : std::runtime_error(message),
        status(status),
        param(std::move(param)),
        code(std::move(code)) {}
  int status;
  std::string param;  // the request field at fault ("messages[1].role"), or ""
  std::string code;   // a machine-readable reason ("rate_limit_exceeded"), or ""
};

// "invalid_request_error", "authentication_error", ... for an HTTP status.
const char* error_type(int status);
nlohmann::json error_body(int status, const std::string& message, const std::string& param = "",
                          const std::string& code = "");

struct ChatPart {
  bool image = false;
  std::string text;   // a text part's text
  std::string url;    // an image part's URL (data:, file://, http(s)://)
  std::string param;  // where it was: "messages[0].content[1]"
};

struct ChatMessage {
  std::string role;                // system, user, assistant, tool
  bool content_is_string = false;  // written as one string: one text part
  std::vector<ChatPart> parts;
  nlohmann::json tool_calls;  // an assistant's calls, as OpenAI writes them (null: none)
  std::string tool_call_id;   // a tool message's: the call it answers
};

// How an answer uses the request's tools (OpenAI's tool_choice): not at all ("none", the
// default, as vLLM's), one call of a named function (the answer is its arguments object, held
// to the function's parameters schema), or one or more calls of any of them ("required"; the
// answer is {"tool_calls": [{"name": ..., "parameters": {...}}, ...]}, each held to its
// function's schema). "auto" needs a model with a tool-call format of its own: refused.
enum class ToolUse { kNone, kNamed, kRequired };

struct CompletionRequest {
  bool chat = true;
  std::vector<ChatMessage> messages;  // chat
  std::string prompt;                 // text completion
  std::optional<std::vector<int32_t>> prompt_ids;  // or its token ids, as given
  GenerationSection generation;       // the config's defaults, overridden by the request
  bool stream = false;
  bool include_usage = false;
  bool echo = false;  // completions: the answer's text (and logprobs) start with the prompt's
  bool tokens_as_ids = false;  // vLLM's return_tokens_as_token_ids: logprobs name "token_id:N"
  int images = 0;
  int choices = 1;  // n: answers to the same prompt, each a request of its own
  nlohmann::json tools;  // chat: the request's tools (null: none), for the chat template
  ToolUse tool_use = ToolUse::kNone;
  std::string tool_name;  // kNamed: the function
};

// A request's fields read with their errors as 400s naming them: true / false (null: false),
// a string.
bool boolean_field(const std::string& field, const nlohmann::json& value);
std::string string_field(const std::string& field, const nlohmann::json& value);

// n's ceiling, OpenAI's.
constexpr int kMaxChoices = 128;

// Parses a /v1/chat/completions body; `defaults` are the config's generation keys. Throws
// ApiError (400) naming the field: invalid JSON, a wrong type or range, an unknown role, an
// unsupported parameter, more than `max_images` images.
CompletionRequest parse_chat_request(const std::string& body, const GenerationSection& defaults,
                                     int max_images);
// Parses a /v1/completions body (a text prompt, no images).
CompletionRequest parse_completion_request(const std::string& body,
                                           const GenerationSection& defaults);

// The coordinator's finish ("eos", "stop", "length") as OpenAI's ("stop", "length"); a
// "tool_calls" finish (an answer read as tool calls) stays.
std::string finish_reason(const std::string& coordinator_finish);

struct Usage {
  int prompt_tokens = 0;  // with the image tokens
  int completion_tokens = 0;
};
nlohmann::json usage_json(const Usage& usage);

// How far the completions form's text_offset has come through an answer's text.
struct TextCursor {
  size_t byte = 0;        // in the text
  size_t characters = 0;  // code points before `byte`: the offset clients read
};

// Tokens' logprobs as a choice's "logprobs": chat's {"content": [{token, logprob, bytes,
// top_logprobs}], "refusal": null}, or the completions' {tokens, token_logprobs,
// top_logprobs (each with the token itself), text_offset}. text_offset is where each token
// lies in `text` (the answer's, echoed prompt and all, as far as known), in characters,
// from `cursor` on, which moves past them: a token is found where its text is, or is, but
// for the space a text's start drops; a special token ("</s>") takes no room, as the text
// does not show it. A token without a logprob (an echoed prompt's first) has null for it
// and for its alternatives. `as_ids` (vLLM's return_tokens_as_token_ids): each token and
// alternative is named "token_id:N" (chat's bytes are that name's), for clients that need
// the ids (a token's text may be part of a character, and texts need not be unique).
nlohmann::json logprobs_json(bool chat, const std::vector<TokenLogprob>& logprobs,
                             const std::string& text, TextCursor& cursor, bool as_ids = false);

// One choice of a whole answer; `logprobs` null unless asked.
struct ChoiceAnswer {
  std::string text;
  std::string finish;  // the coordinator's
  nlohmann::json logprobs;
  nlohmann::json tool_calls = nullptr;  // chat: the calls (tool_calls_of), in place of content
};
// A whole answer: "chat.completion" or "text_completion", its choices indexed in order.
nlohmann::json completion_body(bool chat, const std::string& id, int64_t created,
                               const std::string& model, const std::vector<ChoiceAnswer>& choices,
                               const Usage& usage);
// One stream chunk of choice `index`: "chat.completion.chunk" (delta) or "text_completion"
// (text). `role` goes in the choice's first chat delta; `finish` is "" until its last;
// `logprobs` those of the tokens since its last chunk, when asked; `tool_calls` (chat): the
// delta's calls (OpenAI's streamed form: each with its "index"), in place of text.
nlohmann::json chunk_body(bool chat, const std::string& id, int64_t created,
                          const std::string& model, const std::string& text, bool role,
                          const std::string& finish, nlohmann::json logprobs = nullptr,
                          int index = 0, nlohmann::json tool_calls = nullptr);
// The final usage chunk (no choices).
nlohmann::json usage_chunk_body(bool chat, const std::string& id, int64_t created,
                                const std::string& model, const Usage& usage);

// Server-Sent Events: "data: JSON\n\n", and the end of a stream, "data: [DONE]\n\n".
std::string sse_event(const nlohmann::json& body);
std::string sse_done();

}  // namespace llava
