// Finding a handler's socket among this process's descriptors (/proc/self/fd): the one
// whose local and peer ports and peer address are the request's.
#include "launch/client_socket.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <httplib.h>
#include <sys/socket.h>

#include <cstdlib>

namespace llava {
namespace {

uint16_t port_of(const sockaddr_storage& a) {
  if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
  if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
  return 0;
}

}  // namespace

int client_socket(const httplib::Request& req) {
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return -1;
  int found = -1;
  while (dirent* entry = readdir(dir)) {
    const int fd = std::atoi(entry->d_name);
    if (fd <= 2 || fd == dirfd(dir)) continue;
    sockaddr_storage local{}, peer{};
    socklen_t local_size = sizeof local, peer_size = sizeof peer;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_size) != 0) continue;
    if (local.ss_family != AF_INET && local.ss_family != AF_INET6) continue;
    if (port_of(local) != req.local_port) continue;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_size) != 0) continue;
    if (port_of(peer) != req.remote_port) continue;
    char address[INET6_ADDRSTRLEN] = "";
    const void* raw =
        peer.ss_family == AF_INET
            ? static_cast<const void*>(&reinterpret_cast<const sockaddr_in&>(peer).sin_addr)
            : static_cast<const void*>(&reinterpret_cast<const sockaddr_in6&>(peer).sin6_addr);
    inet_ntop(peer.ss_family, raw, address, sizeof address);
    if (req.remote_addr == address) {
      found = fd;
      break;
    }
  }
  closedir(dir);
  return found;
}

}  // namespace llava
