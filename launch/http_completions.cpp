// /v1/chat/completions and /v1/completions: a handler parses and validates (400s never reach
// the coordinator), fetches the images, renders the chat template, posts a submit, then
// waits on the request's channel and the client's socket together: text, the result, a
// client gone (cancel), or the timeout. Answered whole, or streamed as server-sent events.
#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <optional>

#include "common/errors.h"
#include "coordinator/coordinator.h"
#include "launch/client_socket.h"
#include "launch/http_replies.h"
#include "launch/http_server.h"
#include "launch/openai_api.h"
#include "launch/openai_images.h"
#include "launch/openai_tools.h"
#include "launch/request_channel.h"
#include "launch/request_json.h"

namespace llava {

using Clock = RequestChannel::Clock;

namespace {

// An answer's logprobs in the order a client reads them: an echoed prompt's, then the
// generated tokens'.
std::vector<TokenLogprob> all_logprobs(const RequestResult& result) {
  std::vector<TokenLogprob> all = result.prompt_logprobs;
  all.insert(all.end(), result.logprobs.begin(), result.logprobs.end());
  return all;
}

}  // namespace

RequestSpec HttpServer::completion_spec(CompletionRequest& request, bool chat) const {
  RequestSpec spec;
  spec.generation = request.generation;
  spec.generation.chat_template = "{prompt}";  // the prompt is rendered here, whole
  if (chat) {
    std::vector<ChatTurn> turns;
    for (auto& message : request.messages) {
      ChatTurn turn;
      turn.role = message.role;
      turn.content_is_string = message.content_is_string;
      turn.tool_calls = message.tool_calls;
      turn.tool_call_id = message.tool_call_id;
      for (auto& part : message.parts) {
        if (part.image) {
          spec.image_bytes.push_back(fetch_image(part.url, part.param, server_));
          std::string().swap(part.url);  // a data: URI is the image again, in base64
        }
        turn.parts.push_back({part.image, part.text});
      }
      turns.push_back(std::move(turn));
    }
    try {
      spec.prompt = chat_template_.render(turns, true, request.tools);
    } catch (const RequestError& e) {
      throw ApiError(400, std::string("messages: ") + e.what(), "messages");
    }
  } else {
    spec.prompt = request.prompt;
    spec.prompt_ids = request.prompt_ids;
    spec.continues_prompt = request.echo;
  }
  const int choices = request.choices;
  // Each choice is a request with the images again: n copies may hold no more than the
  // images one request may send.
  uint64_t image_bytes = 0;
  for (const auto& bytes : spec.image_bytes) image_bytes += bytes.size();
  if (choices > 1 && image_bytes * static_cast<uint64_t>(choices) >
                         static_cast<uint64_t>(server_.max_images) * server_.max_image_bytes) {
    throw ApiError(400,
                   "n: " + std::to_string(choices) + " choices of " + std::to_string(image_bytes) +
                       " bytes of images are over server.max_images x server.max_image_bytes",
                   "n");
  }
  return spec;
}

void HttpServer::submit_choices(RequestSpec spec, const std::shared_ptr<RequestChannel>& channel,
                                const std::shared_ptr<std::string>& echoed, bool decode_echo) {
  const int images = static_cast<int>(spec.image_bytes.size());
  post([this, spec = std::move(spec), channel, images, echoed,
        decode_echo](Coordinator* coordinator) mutable {
    if (!coordinator) {
      RequestResult refused;
      refused.error = "refused: the pipeline is shutting down";
      refused.error_kind = ErrorKind::kUnavailable;
      for (int choice = 0; choice < channel->choices(); ++choice) channel->finish(choice, refused);
      return;
    }
    if (decode_echo) *echoed = coordinator->tokenizer().decode(*spec.prompt_ids);
    // Choice i samples with seed + i (vLLM's rule): seeded choices differ, and each is
    // reproducible on its own.
    const uint64_t seed = spec.generation.seed;
    for (int choice = 0; choice < channel->choices(); ++choice) {
      const bool last = choice + 1 == channel->choices();
      RequestSpec one = last ? std::move(spec) : spec;
      one.generation.seed = seed + static_cast<uint64_t>(choice);
      submitting_ = {channel, choice};
      const uint64_t request_id = coordinator->submit(std::move(one));
      submitting_ = {};
      channel->accept(choice, request_id);
      if (channel->failure()) break;  // refused: the answer is that error, the rest not asked
      if (channel->finished(choice)) continue;  // answered inside submit()
      open_[request_id] = {channel, choice};
      metrics_.on_submitted(request_id, images);
    }
  });
}

void HttpServer::complete(const httplib::Request& req, httplib::Response& res, bool chat) {
  CompletionRequest request =
      chat ? parse_chat_request(req.body, config_.generation, server_.max_images)
           : parse_completion_request(req.body, config_.generation);
  RequestSpec spec = completion_spec(request, chat);
  const int choices = request.choices;
  const std::string id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_response_number());
  spec.client_id = id;
  auto channel = std::make_shared<RequestChannel>(choices);
  // echo: each answer starts with the prompt's text (a prompt of ids: decoded on the
  // coordinator's thread, read here once the request is accepted).
  auto echoed = std::make_shared<std::string>(request.echo ? request.prompt : "");
  submit_choices(std::move(spec), channel, echoed, request.echo && request.prompt_ids.has_value());

  const int client = client_socket(req);
  const auto deadline = Clock::now() + std::chrono::milliseconds(server_.request_timeout_ms);
  const auto timeout_text = "timed out after " + std::to_string(server_.request_timeout_ms / 1000) +
                            " s (server.request_timeout)";
  // Waits for `ready`, or for a choice's failure; the client's going, the timeout and a
  // failure cancel every choice still running and answer with their error.
  auto wait_for = [&](const std::function<bool()>& ready) {
    const auto wake =
        channel->wait(client, deadline, [&] { return ready() || channel->failure(); });
    if (wake != RequestChannel::Wake::kReady) {
      cancel(channel, wake == RequestChannel::Wake::kTimedOut ? "timed out"
                                                              : "the HTTP client disconnected");
      throw ApiError(wake == RequestChannel::Wake::kTimedOut ? 500 : 499, timeout_text);
    }
    if (auto failed = channel->failure()) {
      cancel(channel, "another choice of its HTTP request failed");
      throw ApiError(status_for(failed->error_kind), failed->error);
    }
  };
  wait_for([&] { return channel->accepted(); });  // refused at once: an error status, not a stream
  const int64_t created = unix_now();
  const bool with_logprobs = request.generation.logprobs >= 0;
  if (!request.stream) {
    wait_for([&] { return channel->finished(); });
    std::vector<ChoiceAnswer> answers;
    Usage usage;
    for (int choice = 0; choice < choices; ++choice) {
      std::string text;
      std::optional<RequestResult> result;
      channel->take(choice, text, result);
      usage.prompt_tokens = result->prompt_tokens;  // the same prompt, counted once
      usage.completion_tokens += static_cast<int>(result->tokens.size());
      const std::string answer = *echoed + result->text;
      TextCursor cursor;
      answers.push_back({answer, result->finish,
                         with_logprobs ? logprobs_json(chat, all_logprobs(*result), answer, cursor,
                                                       request.tokens_as_ids)
                                       : nlohmann::json(),
                         tool_calls_of(request, answer)});
    }
    answer_json(res, 200, completion_body(chat, id, created, model_id_, answers, usage));
    return;
  }

  // Streaming: each choice's role first, then text as it comes, each chunk naming its
  // choice; each choice's end; when all have ended, the usage and [DONE].
  struct ChoiceStream {
    bool echo_pending = false;  // the prompt's text goes before its first chunk
    bool ended = false;
    size_t logprobs_sent = 0;  // tokens (the echoed prompt's first) whose logprobs went out
    std::string text;          // what went out, for the completions' text_offset
    TextCursor cursor;         // how far the logprobs that went out reached in it
    std::string answer;        // a tool call's text so far
    std::string call_id;       // a named function's call, once its first chunk went out
    ToolCallReader reader;     // a "required" answer's calls, as they come
  };
  struct Stream {
    std::shared_ptr<RequestChannel> channel;
    int client = -1;
    bool chat = false, include_usage = false, started = false;
    std::string id;
    int64_t created = 0;
    Clock::time_point deadline;
    bool with_logprobs = false, tokens_as_ids = false;
    std::shared_ptr<std::string> echoed;  // the prompt's text (echo)
    std::vector<ChoiceStream> choices;
    Usage usage;
    // A tool call's answer streams as OpenAI's tool_calls deltas: each call's id and name
    // first, then its arguments as they come.
    CompletionRequest tools;  // tool_use, tool_name
  };
  auto stream = std::make_shared<Stream>();
  stream->channel = channel;
  stream->client = client;
  stream->chat = chat;
  stream->include_usage = request.include_usage;
  stream->id = id;
  stream->created = created;
  stream->deadline = deadline;
  stream->with_logprobs = with_logprobs;
  stream->tokens_as_ids = request.tokens_as_ids;
  stream->echoed = echoed;
  stream->tools.tool_use = request.tool_use;
  stream->tools.tool_name = request.tool_name;
  stream->choices.resize(static_cast<size_t>(choices));
  for (auto& c : stream->choices) c.echo_pending = request.echo;
  res.status = 200;
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, stream, timeout_text](size_t, httplib::DataSink& sink) {
        auto send = [&](const std::string& event) {
          return sink.write(event.data(), event.size());
        };
        auto end = [&] {
          send(sse_done());
          sink.done();
          return true;
        };
        if (!stream->started) {
          stream->started = true;
          for (int choice = 0; stream->chat && choice < stream->channel->choices(); ++choice) {
            if (!send(sse_event(chunk_body(true, stream->id, stream->created, model_id_, "", true,
                                           "", nullptr, choice)))) {
              return false;  // the releaser cancels
            }
          }
          return true;
        }
        const auto wake = stream->channel->wait(stream->client, stream->deadline,
                                                [&] { return stream->channel->has_news(); });
        if (wake == RequestChannel::Wake::kClientGone) return false;
        if (wake == RequestChannel::Wake::kTimedOut) {
          cancel(stream->channel, "timed out");
          send(sse_event(error_body(500, timeout_text)));
          return end();
        }
        for (int choice = 0; choice < stream->channel->choices(); ++choice) {
          ChoiceStream& mine = stream->choices[static_cast<size_t>(choice)];
          std::string text;
          std::optional<RequestResult> result;
          std::vector<TokenLogprob> logprobs;
          if (mine.ended || !stream->channel->take(choice, text, result, &logprobs)) continue;
          // The tokens' logprobs go with their text; those whose text never streamed (held
          // back, then cut by a stop string or the end) go with the finish.
          auto logprobs_of = [&](const std::vector<TokenLogprob>& tokens) -> nlohmann::json {
            if (!stream->with_logprobs) return nullptr;
            mine.logprobs_sent += tokens.size();
            return logprobs_json(stream->chat, tokens, mine.text, mine.cursor,
                                 stream->tokens_as_ids);
          };
          const ToolUse tool_use = stream->tools.tool_use;
          // A named function's arguments: the text past the answer's leading space.
          auto arguments = [&](const std::string& text) {
            if (!mine.call_id.empty()) return text;
            const size_t start = text.find_first_not_of(" \t\n\r");
            return start == std::string::npos ? std::string() : text.substr(start);
          };
          // The tool_calls deltas of a piece of a call's text (null where none).
          auto deltas_of = [&](const std::string& text) -> nlohmann::json {
            if (tool_use == ToolUse::kRequired) {
              nlohmann::json deltas = mine.reader.take(text);
              return deltas.empty() ? nlohmann::json() : deltas;
            }
            const std::string piece = tool_use == ToolUse::kNamed ? arguments(text) : "";
            if (piece.empty()) return nullptr;
            nlohmann::json call = {{"index", 0}, {"function", {{"arguments", piece}}}};
            if (mine.call_id.empty()) {
              mine.call_id = tool_call_id();
              call["id"] = mine.call_id;
              call["type"] = "function";
              call["function"]["name"] = stream->tools.tool_name;
            }
            return nlohmann::json::array({std::move(call)});
          };
          auto chunk = [&](const std::string& text, const std::string& finish,
                           nlohmann::json logprobs, nlohmann::json calls) {
            // A call's text goes out as calls, not as content.
            const bool content = tool_use == ToolUse::kNone;
            return send(sse_event(chunk_body(stream->chat, stream->id, stream->created, model_id_,
                                             content ? text : "", false, finish,
                                             std::move(logprobs), choice, std::move(calls))));
          };
          if (mine.echo_pending && (!text.empty() || !logprobs.empty())) {
            text = *stream->echoed + text;
            mine.echo_pending = false;
          }
          if (stream->with_logprobs && !stream->chat) mine.text += text;
          if (tool_use != ToolUse::kNone) mine.answer += text;
          nlohmann::json calls = deltas_of(text);
          const bool news = !logprobs.empty() || (tool_use == ToolUse::kNone && !text.empty()) ||
                            !calls.is_null();
          if (news && !chunk(text, "", logprobs_of(logprobs), std::move(calls))) return false;
          if (!result) continue;
          mine.ended = true;
          if (!result->ok) {
            cancel(stream->channel, "another choice of its HTTP request failed");
            send(sse_event(error_body(status_for(result->error_kind), result->error)));
            return end();
          }
          std::vector<TokenLogprob> rest = all_logprobs(*result);
          rest.erase(rest.begin(),
                     rest.begin() + static_cast<long>(std::min(mine.logprobs_sent, rest.size())));
          const std::string last =
              mine.echo_pending ? *stream->echoed : "";  // nothing streamed (max_tokens 0)
          mine.echo_pending = false;
          if (stream->with_logprobs && !stream->chat) mine.text += last;
          std::string finish = result->finish.empty() ? "stop" : result->finish;
          if (tool_use != ToolUse::kNone) {
            if (!tool_calls_of(stream->tools, mine.answer).is_null()) finish = "tool_calls";
            // Cut (max_tokens) before any call's name was whole: the text, as content.
            if (tool_use == ToolUse::kRequired && finish != "tool_calls" &&
                mine.reader.calls().empty() && !mine.answer.empty() &&
                !send(sse_event(chunk_body(true, stream->id, stream->created, model_id_,
                                           mine.answer, false, "", nullptr, choice)))) {
              return false;
            }
          }
          if (!chunk(last, finish, rest.empty() ? nlohmann::json() : logprobs_of(rest), nullptr)) {
            return false;
          }
          stream->usage.prompt_tokens = result->prompt_tokens;  // the same prompt, counted once
          stream->usage.completion_tokens += static_cast<int>(result->tokens.size());
        }
        if (!std::all_of(stream->choices.begin(), stream->choices.end(),
                         [](const ChoiceStream& c) { return c.ended; })) {
          return true;
        }
        if (stream->include_usage) {
          send(sse_event(usage_chunk_body(stream->chat, stream->id, stream->created, model_id_,
                                          stream->usage)));
        }
        return end();
      },
      [this, stream](bool success) {
        // Ended without its answer (client gone, write failed): cancel, free its KV slots.
        if (!stream->channel->finished()) cancel(stream->channel);
      });
}

}  // namespace llava
