// /v1/chat/completions and /v1/completions: a handler parses and validates (400s never reach
// the coordinator), fetches the images, renders the chat template, posts a submit, then
// waits on the request's channel and the client's socket together: text, the result, a
// client gone (cancel), or the timeout. Answered whole, or streamed as server-sent events.
#include <httplib.h>

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
  }
  const std::string id = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_response_number());
  spec.client_id = id;
  const int images = static_cast<int>(spec.image_bytes.size());
  auto channel = std::make_shared<RequestChannel>();
  post([this, spec = std::move(spec), channel, images](Coordinator* coordinator) mutable {
    if (!coordinator) {
      RequestResult refused;
      refused.error = "refused: the pipeline is shutting down";
      refused.error_kind = ErrorKind::kUnavailable;
      channel->finish(refused);
      return;
    }
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
    size_t text_offset = 0;
    answer_json(res, 200,
                completion_body(chat, id, created, model_id_, result->text, result->finish, usage,
                                with_logprobs ? logprobs_json(chat, result->logprobs, text_offset)
                                              : nlohmann::json()));
    return;
  }

  // Streaming: the role first, then text as it comes; the end, the usage, [DONE].
  struct Stream {
    std::shared_ptr<RequestChannel> channel;
    int client;
    bool chat, include_usage, started = false, ended = false;
    std::string id;
    int64_t created;
    Clock::time_point deadline;
    bool with_logprobs;
    size_t logprobs_sent = 0;  // tokens whose logprobs went out
    size_t text_offset = 0;    // the answer's characters before the next token (completions)
  };
  auto stream = std::make_shared<Stream>(Stream{channel, client, chat, request.include_usage, false,
                                                false, id, created, deadline, with_logprobs});
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
          return logprobs_json(stream->chat, tokens, stream->text_offset);
        };
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
        std::vector<TokenLogprob> rest;
        if (result->logprobs.size() > stream->logprobs_sent) {
          rest.assign(result->logprobs.begin() + static_cast<long>(stream->logprobs_sent),
                      result->logprobs.end());
        }
        if (!send(sse_event(chunk_body(stream->chat, stream->id, stream->created, model_id_, "",
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
