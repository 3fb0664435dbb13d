// One HTTP request's way back from the coordinator's thread to its handler: the text so
// far and the result, under a mutex; an eventfd says "something changed", so that the
// handler can poll it together with its client's socket and see a client that goes away.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "coordinator/coordinator.h"

namespace llava {

class RequestChannel {
 public:
  using Clock = std::chrono::steady_clock;
  enum class Wake { kReady, kClientGone, kTimedOut };

  RequestChannel();  // throws std::runtime_error when no eventfd can be made
  ~RequestChannel();
  RequestChannel(const RequestChannel&) = delete;
  RequestChannel& operator=(const RequestChannel&) = delete;

  // ---- the coordinator's thread
  void accept(uint64_t id);
  void text(const std::string& text);
  // Those of the tokens whose text the next text() brings (it wakes the handler).
  void logprobs(const std::vector<TokenLogprob>& logprobs);
  void finish(const RequestResult& result);  // the first result stays

  // ---- the handler's thread
  std::optional<uint64_t> id() const;
  bool accepted() const;
  bool finished() const;
  // The text not taken yet (with its tokens' logprobs, when asked), and the result once
  // there is one (all its text is taken with it; the logprobs not taken yet are the end
  // of its own).
  bool take(std::string& text, std::optional<RequestResult>& result,
            std::vector<TokenLogprob>* logprobs = nullptr);
  bool has_news() const;

  // Until `ready()` holds, the client's socket (when known, -1 if not) hangs up, or `deadline`.
  Wake wait(int client, Clock::time_point deadline, const std::function<bool()>& ready);

 private:
  void notify();

  mutable std::mutex mutex_;
  int event_;
  std::optional<uint64_t> id_;
  std::string text_;
  std::vector<TokenLogprob> logprobs_;
  std::optional<RequestResult> result_;
};

}  // namespace llava
