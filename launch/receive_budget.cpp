// receive_budget.h: recv() for this process, counted and timed on the threads that started
// a request's budget. cpp-httplib is a shared library that calls recv(); the executable's
// definition below is the one it binds to (as libzmq's and libcurl's calls do: on their
// threads, and on a handler thread outside a request, it only forwards to the C library's
// recvfrom()).
// Before any header: with _FORTIFY_SOURCE (Ubuntu's GCC turns it on when optimizing) glibc
// declares recv() as an inline wrapper, which this file must not meet beside its own.
#undef _FORTIFY_SOURCE
#include "launch/receive_budget.h"

#include <sys/socket.h>
#include <sys/types.h>

#include <algorithm>
#include <atomic>
#include <chrono>

namespace llava {
namespace receive_budget {
namespace {

std::atomic<int64_t> timeout_ns{0};

using Clock = std::chrono::steady_clock;

struct Budget {
  bool on = false;               // this thread's request is counted and timed
  int64_t header_left = -1;      // bytes its line and headers may still take; -1: not counted
  Clock::time_point deadline{};  // set by its first byte
  bool started = false;          // whether that byte came
  Cut cut = Cut::kNone;
  bool refused = false;  // the connection's remaining bytes are not read
  int socket = -1;       // the connection's, as recv() last saw it
};
thread_local Budget budget;

void start_request() {
  budget.on = true;
  budget.header_left = kHeaderBytes;
  budget.started = false;
  budget.cut = Cut::kNone;
}

}  // namespace

void set_timeout_ms(uint64_t ms) {
  timeout_ns = static_cast<int64_t>(ms) * 1000000;
}
void connection_begins() {
  budget = Budget{};
  start_request();
}
void connection_ends() {
  budget = Budget{};
}
void answer_written() {
  // A refused connection's wait for its next request ends at once: httplib then closes it.
  if (budget.refused && budget.socket >= 0) shutdown(budget.socket, SHUT_RD);
  start_request();
}
void headers_read() {
  budget.header_left = -1;
}
void request_read() {
  budget.on = false;
}
void refuse_the_rest() {
  budget.refused = true;
}
Cut cut() {
  return budget.cut;
}

}  // namespace receive_budget
}  // namespace llava

// recv(2) is recvfrom(2) without the sender's address: that is what it forwards to.
extern "C" ssize_t recv(int socket, void* buffer, size_t size, int flags) {
  using llava::receive_budget::Clock;
  using llava::receive_budget::Cut;
  auto& b = llava::receive_budget::budget;
  // (httplib peeks to see whether a client is still there before it answers.)
  if ((flags & MSG_PEEK) != 0) return recvfrom(socket, buffer, size, flags, nullptr, nullptr);
  b.socket = socket;
  // As if the client had closed: after an answer that ends the connection, past the
  // header bytes, or past the deadline.
  if (b.refused) return 0;
  if (!b.on) return recvfrom(socket, buffer, size, flags, nullptr, nullptr);
  if (b.header_left == 0 || (b.started && Clock::now() >= b.deadline)) {
    b.cut = b.header_left == 0 ? Cut::kHeaderBytes : Cut::kTimeout;
    b.refused = true;
    return 0;
  }
  if (b.header_left > 0) size = std::min<size_t>(size, static_cast<size_t>(b.header_left));
  const ssize_t got = recvfrom(socket, buffer, size, flags, nullptr, nullptr);
  if (got > 0) {
    if (b.header_left > 0) b.header_left -= got;
    const int64_t timeout = llava::receive_budget::timeout_ns;
    if (!b.started && timeout > 0) {
      b.started = true;
      b.deadline = Clock::now() + std::chrono::nanoseconds(timeout);
    }
  }
  return got;
}
