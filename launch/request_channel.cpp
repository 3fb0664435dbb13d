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

RequestChannel::RequestChannel(int choices)
    : event_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
      choices_(static_cast<size_t>(std::max(choices, 1))) {
  if (event_ < 0) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
}

RequestChannel::~RequestChannel() {
  ::close(event_);
}

void RequestChannel::accept(int choice, uint64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  choices_.at(static_cast<size_t>(choice)).id = id;
  notify();
}

void RequestChannel::text(int choice, const std::string& text) {
  std::lock_guard<std::mutex> lock(mutex_);
  choices_.at(static_cast<size_t>(choice)).text += text;
  notify();
}

void RequestChannel::logprobs(int choice, const std::vector<TokenLogprob>& logprobs) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& mine = choices_.at(static_cast<size_t>(choice)).logprobs;
  mine.insert(mine.end(), logprobs.begin(), logprobs.end());  // on_text wakes
}

void RequestChannel::finish(int choice, const RequestResult& result) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& mine = choices_.at(static_cast<size_t>(choice)).result;
  if (!mine) mine = result;
  notify();
}

std::vector<uint64_t> RequestChannel::ids() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<uint64_t> out;
  for (const auto& c : choices_) {
    if (c.id) out.push_back(*c.id);
  }
  return out;
}

bool RequestChannel::accepted() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return std::all_of(choices_.begin(), choices_.end(),
                     [](const Choice& c) { return c.id.has_value() || c.result.has_value(); });
}

bool RequestChannel::finished() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return std::all_of(choices_.begin(), choices_.end(),
                     [](const Choice& c) { return c.result.has_value(); });
}

bool RequestChannel::finished(int choice) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return choices_.at(static_cast<size_t>(choice)).result.has_value();
}

std::optional<RequestResult> RequestChannel::failure() const {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& c : choices_) {
    if (c.result && !c.result->ok) return c.result;
  }
  return std::nullopt;
}

bool RequestChannel::take(int choice, std::string& text, std::optional<RequestResult>& result,
                          std::vector<TokenLogprob>* logprobs) {
  std::lock_guard<std::mutex> lock(mutex_);
  Choice& c = choices_.at(static_cast<size_t>(choice));
  text.swap(c.text);
  c.text.clear();
  if (logprobs) {
    logprobs->swap(c.logprobs);
    c.logprobs.clear();
  }
  result = c.result;
  c.result_taken = c.result.has_value();
  return !text.empty() || result.has_value();
}

bool RequestChannel::has_news() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return std::any_of(choices_.begin(), choices_.end(), [](const Choice& c) {
    return !c.text.empty() || (c.result && !c.result_taken);
  });
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
