// The HTTP server's routes: the API key check, the OpenAI endpoints (completions are
// http_completions.cpp), /health and /metrics, vLLM's /tokenize and /detokenize, and the
// OpenAI envelope for 404, 405 and 413. Anything that needs the coordinator runs on its
// thread: the handler posts and waits.
#include <httplib.h>

#include <future>
#include <iostream>
#include <set>

#include "common/json_depth.h"
#include "common/units.h"
#include "coordinator/coordinator.h"
#include "launch/http_replies.h"
#include "launch/http_server.h"
#include "launch/openai_api.h"
#include "launch/receive_budget.h"
#include "launch/request_json.h"

namespace llava {
namespace {

const std::set<std::string> kEndpoints = {
    "/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/tokenize",
    "/detokenize"};

// A body as JSON, or null when it is not JSON (or nests past kMaxJsonDepth).
nlohmann::json json_or_null(const std::string& body) {
  try {
    return parse_json(body);
  } catch (const nlohmann::json::exception&) {
    return nullptr;
  }
}

// Compares without stopping at the first difference (no timing hint about the key).
bool same_key(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() != b.size();
  for (size_t i = 0; i < a.size(); ++i)
    diff |= static_cast<unsigned char>(a[i] ^ b[i % std::max<size_t>(1, b.size())]);
  return diff == 0;
}

}  // namespace

std::string HttpServer::body_over_cap_message() const {
  return "the request body is over server.max_body_bytes (" +
         std::to_string(server_.max_body_bytes) + " bytes)";
}

void HttpServer::routes() {
  auto guarded = [this](auto handler) {
    return [this, handler](const httplib::Request& req, httplib::Response& res) {
      try {
        handler(req, res);
      } catch (const ApiError& e) {
        answer_error(res, e.status, e.what(), e.param, e.code);
      } catch (const std::exception& e) {
        const uint64_t n = next_response_number();
        std::cerr << "llava-pipe: HTTP request " << n << " (" << req.method << " " << req.path
                  << "): " << e.what() << "\n";
        answer_error(res, 500,
                     "internal error (request " + std::to_string(n) + " in the server's log)");
      }
    };
  };
  // The coordinator's figures are read on its thread: post, wait for the answer.
  auto on_coordinator = [this](std::function<nlohmann::json(Coordinator*)> read) {
    auto promise = std::make_shared<std::promise<nlohmann::json>>();
    auto answer = promise->get_future();
    post([promise, read](Coordinator* c) { promise->set_value(read(c)); });
    if (answer.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
      throw ApiError(503, "the coordinator did not answer within 10 s");
    }
    return answer.get();
  };

  // The request's headers are in: its body has a cap of its own (with_body).
  probes_->set_pre_routing_handler([](const httplib::Request&, httplib::Response&) {
    receive_budget::headers_read();
    return httplib::Server::HandlerResponse::Unhandled;
  });
  http_->set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    receive_budget::headers_read();
    if (server_.api_key.empty() || req.path == "/health" || req.path == "/metrics") {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    const std::string header = req.get_header_value("Authorization");
    const std::string bearer = "Bearer ";
    if (header.rfind(bearer, 0) != 0 || !same_key(header.substr(bearer.size()), server_.api_key)) {
      res.set_header("WWW-Authenticate", "Bearer");
      answer_error(res, 401,
                   header.empty() ? "missing API key (Authorization: Bearer KEY)" : "wrong API key",
                   "", "invalid_api_key");
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });

  // Ends the connection after this answer: httplib reads no more of it (with keep-alive on
  // it went on waiting there for a next request, whatever was left unread of this one) and
  // says "Connection: close" itself (on every answer when keep-alive is off).
  auto close_after = [this](httplib::Response& res) {
    receive_budget::refuse_the_rest();
    if (server_.keep_alive_ms != 0) res.set_header("Connection", "close");
  };
  // A request that receive_budget cut (httplib saw its connection closed): why, and the
  // connection ends.
  auto answer_cut = [this, close_after](httplib::Response& res) {
    switch (receive_budget::cut()) {
      case receive_budget::Cut::kNone:
        return false;
      case receive_budget::Cut::kHeaderBytes:
        answer_error(
            res, 431,
            "the request line and headers are over " + format_bytes(receive_budget::kHeaderBytes));
        break;
      case receive_budget::Cut::kTimeout:
        answer_error(res, 408,
                     "the request was not received within server.receive_timeout (" +
                         format_millis(server_.receive_timeout_ms) + ") of its first byte");
        break;
    }
    close_after(res);
    return true;
  };

  // A POST's body, read here up to server.max_body_bytes: httplib's own cap holds for a
  // Content-Length, but it reads a chunked body whole, however long. Past the cap the body
  // is read and dropped up to as much again, so that a client still sending gets the 413
  // (as httplib skips an oversized Content-Length); a longer one has its connection cut.
  auto with_body = [this, answer_cut, close_after](httplib::Server::Handler handler) {
    return [this, handler, answer_cut, close_after](const httplib::Request& req,
                                                    httplib::Response& res,
                                                    const httplib::ContentReader& content) {
      httplib::Request whole = req;
      const uint64_t cap = server_.max_body_bytes;
      uint64_t seen = 0;
      const bool read = content([&](const char* data, size_t size) {
        seen += size;
        if (seen <= cap) whole.body.append(data, size);
        return seen <= 2 * cap;
      });
      receive_budget::request_read();  // the answer is not timed
      // Over the cap: counted here, or (status 413) by httplib from the Content-Length.
      if (seen > cap || res.status == 413) {
        close_after(res);  // the rest of the body is not read
        answer_error(res, 413, body_over_cap_message());
      } else if (read) {
        handler(whole, res);
      } else if (!answer_cut(res)) {
        close_after(res);
        answer_error(res, 400, "the request body could not be read whole");
      }
    };
  };
  http_->Post("/v1/chat/completions",
              with_body(guarded([this](const httplib::Request& req, httplib::Response& res) {
                complete(req, res, true);
              })));
  http_->Post("/v1/completions",
              with_body(guarded([this](const httplib::Request& req, httplib::Response& res) {
                complete(req, res, false);
              })));
  http_->Get("/v1/models", guarded([this](const httplib::Request&, httplib::Response& res) {
               answer_json(res, 200,
                           {{"object", "list"},
                            {"data",
                             {{{"id", model_id_},
                               {"object", "model"},
                               {"created", started_},
                               {"owned_by", "llava-pipe"}}}}});
             }));
  const httplib::Server::Handler health = guarded([on_coordinator](const httplib::Request&,
                                                                   httplib::Response& res) {
    const nlohmann::json health = on_coordinator([](Coordinator* c) -> nlohmann::json {
      if (!c) return {{"status", 503}, {"reason", "shutting down"}};
      const std::string why = c->unavailable_reason();
      if (!why.empty()) return {{"status", 503}, {"reason", why}};
      return {{"status", 200}, {"reason", "ok"}};
    });
    const int status = health["status"];
    answer_json(res, status,
                {{"status", status == 200 ? "ok" : "unavailable"}, {"reason", health["reason"]}});
  });
  const httplib::Server::Handler metrics =
      guarded([this, on_coordinator](const httplib::Request&, httplib::Response& res) {
        on_coordinator([this](Coordinator* c) {
          if (c) metrics_.refresh(*c);
          return nlohmann::json();
        });
        res.set_content(metrics_.registry().render(), "text/plain; version=0.0.4; charset=utf-8");
      });
  // Both on the API's port, and alone on the probes' (start_probes).
  for (httplib::Server* server : {http_.get(), probes_.get()}) {
    server->Get("/health", health);
    server->Get("/metrics", metrics);
  }

  // vLLM's /tokenize and /detokenize: the coordinator's tokenizer, on its thread.
  http_->Post("/tokenize", with_body(guarded([on_coordinator](const httplib::Request& req,
                                                              httplib::Response& res) {
                const auto body = json_or_null(req.body);
                if (!body.is_object() || !body.contains("prompt") || !body["prompt"].is_string()) {
                  throw ApiError(400, "prompt: expected a string", "prompt");
                }
                const bool special = body.value("add_special_tokens", true);
                const std::string prompt = body["prompt"];
                auto tokens = on_coordinator([&](Coordinator* c) -> nlohmann::json {
                  if (!c) return nullptr;
                  return c->tokenizer().encode(prompt, special);
                });
                if (tokens.is_null()) throw ApiError(503, "the server is shutting down");
                answer_json(res, 200, {{"tokens", tokens}, {"count", tokens.size()}});
              })));
  http_->Post(
      "/detokenize",
      with_body(guarded([on_coordinator](const httplib::Request& req, httplib::Response& res) {
        const auto body = json_or_null(req.body);
        if (!body.is_object() || !body.contains("tokens") || !body["tokens"].is_array()) {
          throw ApiError(400, "tokens: expected a list of token ids", "tokens");
        }
        std::vector<int32_t> ids;
        for (const auto& id : body["tokens"]) {
          if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
            throw ApiError(400, "tokens: " + json_text(id) + " is not a token id", "tokens");
          }
          ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
        }
        auto text = on_coordinator([&](Coordinator* c) -> nlohmann::json {
          if (!c) return nullptr;
          for (int32_t id : ids) {
            if (id >= c->model().text.vocab_size) return {{"bad", id}};
          }
          return c->tokenizer().decode(ids);
        });
        if (text.is_null()) throw ApiError(503, "the server is shutting down");
        if (text.is_object()) {
          throw ApiError(400, "tokens: " + json_text(text["bad"]) + " is past the vocabulary",
                         "tokens");
        }
        answer_json(res, 200, {{"prompt", text}});
      })));

  // 404 for unknown paths, 405 for a known path with the wrong method; 413 from httplib's
  // body cap; every one in the OpenAI envelope.
  http_->set_error_handler([this, answer_cut](const httplib::Request& req, httplib::Response& res) {
    if (res.status == 404 && kEndpoints.count(req.path)) res.status = 405;
    if (!res.body.empty() || answer_cut(res)) return;
    if (res.status == 404)
      answer_error(res, 404, "no such endpoint: " + req.path);
    else if (res.status == 405)
      answer_error(res, 405, req.method + " is not allowed on " + req.path);
    else if (res.status == 413) {
      answer_error(res, 413, body_over_cap_message());
    } else {
      answer_error(res, res.status, "HTTP error " + std::to_string(res.status));
    }
  });
  // After each answer is written; a kept-alive connection's next request starts its own
  // budget.
  const auto count = [this](const httplib::Request& req, const httplib::Response& res) {
    metrics_.on_http_response(kEndpoints.count(req.path) ? req.path : "other", res.status);
    receive_budget::answer_written();
  };
  http_->set_logger(count);
  probes_->set_logger(count);
}

}  // namespace llava
