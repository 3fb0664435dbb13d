// One HTTP request's way back from the coordinator's thread to its handler: for each of its
// choices (a coordinator request each), the text so far and the result, under a mutex; an eventfd
// says "something changed", so that the handler can poll it together with its client's socket and
// see a client that goes away.
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

  // One coordinator request per choice (the API's n), numbered from 0.
  explicit RequestChannel(
      int choices = 1);  // throws std::runtime_error when no eventfd can be made
  ~RequestChannel();
  RequestChannel(const RequestChannel&) = delete;
  RequestChannel& operator=(const RequestChannel&) = delete;

  int choices() const { return static_cast<int>(choices_.size()); }

  // ---- the coordinator's thread
  void accept(int choice, uint64_t id);
  void text(int choice, const std::string& text);
  // Those of the tokens whose text the next text() brings (it wakes the handler).
  void logprobs(int choice, const std::vector<TokenLogprob>& logprobs);
  void finish(int choice, const RequestResult& result);  // the first result stays

  // ---- the handler's thread
  std::vector<uint64_t> ids() const;  // the accepted choices' request ids
  bool accepted() const;              // every choice accepted (or already answered)
  bool finished() const;              // every choice answered
  bool finished(int choice) const;
  // The first choice's result that failed, if one did (the answer is then that error).
  std::optional<RequestResult> failure() const;
  // The choice's text not taken yet (with its tokens' logprobs, when asked), and its result
  // once there is one (all its text is taken with it; the logprobs not taken yet are the
  // end of its own).
  bool take(int choice, std::string& text, std::optional<RequestResult>& result,
            std::vector<TokenLogprob>* logprobs = nullptr);
  bool has_news() const;  // of any choice (a result is news until take() hands it out)

  // Until `ready()` holds, the client's socket (when known, -1 if not) hangs up, or `deadline`.
  Wake wait(int client, Clock::time_point deadline, const std::function<bool()>& ready);

 private:
  void notify();

  struct Choice {
    std::optional<uint64_t> id;
    std::string text;
    std::vector<TokenLogprob> logprobs;
    std::optional<RequestResult> result;
    bool result_taken = false;  // take() has handed it out: no news any more
  };
  mutable std::mutex mutex_;
  int event_;
  std::vector<Choice> choices_;
};

}  // namespace llava
