// header_budget.h: recv() for this process, counted on the threads that armed the budget.
// cpp-httplib is a shared library that calls recv(); the executable's definition below is
// the one it binds to (as libzmq's and libcurl's calls do: on their threads, and on a
// handler thread once disarmed, it only forwards to the C library's recvfrom()).
// Before any header: with _FORTIFY_SOURCE (Ubuntu's GCC turns it on when optimizing) glibc
// declares recv() as an inline wrapper, which this file must not meet beside its own.
#undef _FORTIFY_SOURCE
#include "launch/header_budget.h"

#include <sys/socket.h>
#include <sys/types.h>

#include <algorithm>

namespace llava {
namespace header_budget {
namespace {

thread_local int64_t left = -1;  // bytes this thread may still receive; -1: not counted

}  // namespace

void arm() {
  left = kBytes;
}
void disarm() {
  left = -1;
}

}  // namespace header_budget
}  // namespace llava

// recv(2) is recvfrom(2) without the sender's address: that is what it forwards to.
extern "C" ssize_t recv(int socket, void* buffer, size_t size, int flags) {
  int64_t& left = llava::header_budget::left;
  if (left < 0 || (flags & MSG_PEEK) != 0) {
    return recvfrom(socket, buffer, size, flags, nullptr, nullptr);
  }
  if (left == 0) return 0;  // as if the client had closed
  const ssize_t got = recvfrom(socket, buffer, std::min<size_t>(size, static_cast<size_t>(left)),
                               flags, nullptr, nullptr);
  if (got > 0) left -= got;
  return got;
}
