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

void HttpServer::complete(const httplib::Request& req, httplib::Response& res, bool chat) {
  CompletionRequest request =
      chat ? parse_chat_request(req.body, config_.generation, server_.max_images)
           : parse_completion_request(req.body, config_.generation);
  RequestSpec spec;
  spec.generation = request.generation;
  spec.generation.chat_template = "{prompt}";  // the prompt is rendered here, whole
  if (chat) {
    std::vector<ChatTurn> turns;
    for (auto& message : request.messages) {
      ChatTurn turn;
      turn.role = message.role;
      turn.content_is_string = message.content_is_string;
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
      spec.prompt = chat_template_.render(turns, true);
    } catch (const RequestError& e) {
      throw ApiError(400, std::string("messages: ") + e.what(), "messages");
    }
  } else {
    spec.prompt = request.prompt;
    spec.prompt_ids = request.prompt_ids;
    spec.continues_prompt = request.echo;
  }
  const std::string id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_response_number());
  spec.client_id = id;
  const int images = static_cast<int>(spec.image_bytes.size());
  auto channel = std::make_shared<RequestChannel>();
  // echo: the answer starts with the prompt's text (a prompt of ids: decoded on the
  // coordinator's thread, read here once the request is accepted).
  auto echoed = std::make_shared<std::string>(request.echo ? request.prompt : "");
  post([this, spec = std::move(spec), channel, images, echoed,
        decode_ids = request.echo && request.prompt_ids](Coordinator* coordinator) mutable {
    if (!coordinator) {
      RequestResult refused;
      refused.error = "refused: the pipeline is shutting down";
      refused.error_kind = ErrorKind::kUnavailable;
      channel->finish(refused);
      return;
    }
    if (decode_ids) *echoed = coordinator->tokenizer().decode(*spec.prompt_ids);
    submitting_ = channel;
    const uint64_t request_id = coordinator->submit(std::move(spec));
    submitting_.reset();
    if (!channel->finished()) {
      open_[request_id] = channel;
      metrics_.on_submitted(request_id, images);
    }
    channel->accept(request_id);
  });

  const int client = client_socket(req);
  const auto deadline = Clock::now() + std::chrono::milliseconds(server_.request_timeout_ms);
  const auto timeout_text = "timed out after " + std::to_string(server_.request_timeout_ms / 1000) +
                            " s (server.request_timeout)";
  auto wake = channel->wait(client, deadline, [&] { return channel->accepted(); });
  if (wake != RequestChannel::Wake::kReady) {  // gone (or stuck) before the coordinator took it
    cancel(channel);
    throw ApiError(wake == RequestChannel::Wake::kTimedOut ? 500 : 499, timeout_text);
  }
  std::string text;
  std::optional<RequestResult> result;
  if (channel->finished()) {  // refused at once: an error status, not a stream
    channel->take(text, result);
    if (!result->ok) throw ApiError(status_for(result->error_kind), result->error);
  }
  const int64_t created = unix_now();
  const bool with_logprobs = request.generation.logprobs >= 0;
  if (!request.stream) {
    wake = channel->wait(client, deadline, [&] { return channel->finished(); });
    if (wake != RequestChannel::Wake::kReady) {
      cancel(channel);
      throw ApiError(wake == RequestChannel::Wake::kTimedOut ? 500 : 499, timeout_text);
    }
    channel->take(text, result);
    if (!result->ok) throw ApiError(status_for(result->error_kind), result->error);
    const Usage usage{result->prompt_tokens, static_cast<int>(result->tokens.size())};
    const std::string answer = *echoed + result->text;
    TextCursor cursor;
    answer_json(res, 200,
                completion_body(chat, id, created, model_id_, answer, result->finish, usage,
                                with_logprobs ? logprobs_json(chat, all_logprobs(*result), answer,
                                                              cursor, request.tokens_as_ids)
                                              : nlohmann::json()));
    return;
  }

  // Streaming: the role first, then text as it comes; the end, the usage, [DONE].
  struct Stream {
    std::shared_ptr<RequestChannel> channel;
    int client = -1;
    bool chat = false, include_usage = false, started = false, ended = false;
    std::string id;
    int64_t created = 0;
    Clock::time_point deadline;
    bool with_logprobs = false, tokens_as_ids = false;
    std::shared_ptr<std::string> echoed;  // the prompt's text, until the first chunk takes it
    size_t logprobs_sent = 0;  // tokens (the echoed prompt's first) whose logprobs went out
    std::string text;          // what went out, for the completions' text_offset
    TextCursor cursor;         // how far the logprobs that went out reached in it
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
          stream->ended = true;
          send(sse_done());
          sink.done();
          return true;
        };
        if (!stream->started) {
          stream->started = true;
          if (stream->chat && !send(sse_event(chunk_body(true, stream->id, stream->created,
                                                         model_id_, "", true, "")))) {
            return false;  // the releaser cancels
          }
          return true;
        }
        const auto wake = stream->channel->wait(stream->client, stream->deadline,
                                                [&] { return stream->channel->has_news(); });
        if (wake == RequestChannel::Wake::kClientGone) return false;
        if (wake == RequestChannel::Wake::kTimedOut) {
          cancel(stream->channel);
          send(sse_event(error_body(500, timeout_text)));
          return end();
        }
        std::string text;
        std::optional<RequestResult> result;
        std::vector<TokenLogprob> logprobs;
        stream->channel->take(text, result, &logprobs);
        // The tokens' logprobs go with their text; those whose text never streamed (held
        // back, then cut by a stop string or the end) go with the finish.
        auto logprobs_of = [&](const std::vector<TokenLogprob>& tokens) -> nlohmann::json {
          if (!stream->with_logprobs) return nullptr;
          stream->logprobs_sent += tokens.size();
          return logprobs_json(stream->chat, tokens, stream->text, stream->cursor,
                               stream->tokens_as_ids);
        };
        if (!stream->echoed->empty() && (!text.empty() || !logprobs.empty())) {
          text = *stream->echoed + text;
          stream->echoed->clear();
        }
        if (stream->with_logprobs && !stream->chat) stream->text += text;
        if ((!text.empty() || !logprobs.empty()) &&
            !send(sse_event(chunk_body(stream->chat, stream->id, stream->created, model_id_, text,
                                       false, "", logprobs_of(logprobs))))) {
          return false;
        }
        if (!result) return true;
        if (!result->ok) {
          send(sse_event(error_body(status_for(result->error_kind), result->error)));
          return end();
        }
        std::vector<TokenLogprob> rest = all_logprobs(*result);
        rest.erase(rest.begin(),
                   rest.begin() + static_cast<long>(std::min(stream->logprobs_sent, rest.size())));
        std::string last;  // an echoed prompt nothing has streamed (max_tokens 0)
        last.swap(*stream->echoed);
        if (stream->with_logprobs && !stream->chat) stream->text += last;
        if (!send(sse_event(chunk_body(stream->chat, stream->id, stream->created, model_id_, last,
                                       false, result->finish.empty() ? "stop" : result->finish,
                                       rest.empty() ? nlohmann::json() : logprobs_of(rest))))) {
          return false;
        }
        if (stream->include_usage) {
          const Usage usage{result->prompt_tokens, static_cast<int>(result->tokens.size())};
          send(sse_event(
              usage_chunk_body(stream->chat, stream->id, stream->created, model_id_, usage)));
        }
        return end();
      },
      [this, stream](bool success) {
        // Ended without its answer (client gone, write failed): cancel, free its KV slot.
        if (!stream->channel->finished()) cancel(stream->channel);
      });
}

}  // namespace llava
