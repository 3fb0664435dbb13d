// RequestChannel: the mutex-guarded text and result, and the eventfd + poll that wake a
// handler (see request_channel.h).
#include "launch/request_channel.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace llava {

RequestChannel::RequestChannel() : event_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  if (event_ < 0) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
}

RequestChannel::~RequestChannel() {
  ::close(event_);
}

void RequestChannel::accept(uint64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  id_ = id;
  notify();
}

void RequestChannel::text(const std::string& text) {
  std::lock_guard<std::mutex> lock(mutex_);
  text_ += text;
  notify();
}

void RequestChannel::finish(const RequestResult& result) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!result_) result_ = result;
  notify();
}

std::optional<uint64_t> RequestChannel::id() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return id_;
}

bool RequestChannel::accepted() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return id_.has_value() || result_.has_value();
}

bool RequestChannel::finished() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return result_.has_value();
}

void RequestChannel::logprobs(const std::vector<TokenLogprob>& logprobs) {
  std::lock_guard<std::mutex> lock(mutex_);
  logprobs_.insert(logprobs_.end(), logprobs.begin(), logprobs.end());  // on_text wakes
}

bool RequestChannel::take(std::string& text, std::optional<RequestResult>& result,
                          std::vector<TokenLogprob>* logprobs) {
  std::lock_guard<std::mutex> lock(mutex_);
  text.swap(text_);
  text_.clear();
  if (logprobs) {
    logprobs->swap(logprobs_);
    logprobs_.clear();
  }
  result = result_;
  return !text.empty() || result.has_value();
}

bool RequestChannel::has_news() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return !text_.empty() || result_.has_value();
}

RequestChannel::Wake RequestChannel::wait(int client, Clock::time_point deadline,
                                          const std::function<bool()>& ready) {
  while (true) {
    if (ready()) return Wake::kReady;
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return Wake::kTimedOut;
    pollfd fds[2] = {{event_, POLLIN, 0}, {client, POLLRDHUP, 0}};
    const int n =
        ::poll(fds, client >= 0 ? 2 : 1, static_cast<int>(std::min<int64_t>(left, 1 << 30)));
    if (n < 0 && errno != EINTR)
      throw std::runtime_error(std::string("poll: ") + std::strerror(errno));
    if (client >= 0 && (fds[1].revents & (POLLRDHUP | POLLHUP | POLLERR))) return Wake::kClientGone;
    if (fds[0].revents & POLLIN) {
      uint64_t count;
      (void)!::read(event_, &count, sizeof count);
    }
  }
}

void RequestChannel::notify() {
  const uint64_t one = 1;
  (void)!::write(event_, &one, sizeof one);
}

}  // namespace llava
