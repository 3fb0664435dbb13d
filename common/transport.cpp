// Socket set-up and checked send/receive.
#include "common/transport.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <zmq_addon.hpp>

#include "common/errors.h"

namespace llava {
namespace {

void apply_common(zmq::socket_t& socket, const TransportOptions& options) {
  socket.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(options.max_message_size));
  socket.set(zmq::sockopt::linger, options.linger_ms);
  // Embedding frames are large; keep the high-water marks in messages modest so a
  // stalled peer cannot queue unbounded memory.
  socket.set(zmq::sockopt::sndhwm, kHighWaterMark);
  socket.set(zmq::sockopt::rcvhwm, kHighWaterMark);
}

// An ipc:// endpoint with a file path (not an abstract "@name"): is a process listening on
// it now? ZeroMQ's bind unlinks the file and binds anew, silently cutting the first
// listener off, so a clash has to be found before the bind.
bool ipc_file_in_use(const std::string& endpoint) {
  if (endpoint.rfind("ipc://", 0) != 0) return false;
  const std::string path = endpoint.substr(6);
  if (path.empty() || path[0] == '@') return false;
  sockaddr_un address{};
  if (path.size() >= sizeof address.sun_path) return false;  // ZeroMQ refuses it at bind
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const bool listening = ::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
  ::close(fd);
  return listening;
}

}  // namespace

TransportOptions transport_options(const CoordinatorSection& coordinator,
                                   const std::string& own_key, const std::string& server_key) {
  TransportOptions options;
  options.max_message_size = coordinator.max_message_size;
  if (!own_key.empty()) {
    options.curve = true;
    options.curve_own = read_curve_key(own_key, true);
    if (!server_key.empty()) {
      options.curve_server_public_key = read_curve_key(server_key, false).public_key;
    }
  }
  return options;
}

zmq::socket_t bind_router(zmq::context_t& context, const std::string& endpoint,
                          const TransportOptions& options) {
  zmq::socket_t socket(context, zmq::socket_type::router);
  apply_common(socket, options);
  if (options.curve) {
    socket.set(zmq::sockopt::curve_server, 1);
    socket.set(zmq::sockopt::curve_secretkey, options.curve_own.secret_key);
  }
  socket.set(zmq::sockopt::router_mandatory, 1);
  if (ipc_file_in_use(endpoint)) {
    throw TransportError("cannot listen on " + endpoint +
                         ": another process is listening there (another pipeline with the same "
                         "coordinator.endpoint?); choose another endpoint or stop that process");
  }
  try {
    socket.bind(endpoint);
  } catch (const zmq::error_t& e) {
    throw TransportError("cannot listen on " + endpoint + ": " + e.what() +
                         (e.num() == EADDRINUSE ? " (another process holds this address)" : ""));
  }
  return socket;
}

std::string last_endpoint(zmq::socket_t& socket) {
  return socket.get(zmq::sockopt::last_endpoint);
}

zmq::socket_t connect_dealer(zmq::context_t& context, const std::string& endpoint,
                             const TransportOptions& options, HandshakeWatch* watch) {
  zmq::socket_t socket(context, zmq::socket_type::dealer);
  apply_common(socket, options);
  if (options.curve) {
    socket.set(zmq::sockopt::curve_serverkey, options.curve_server_public_key);
    socket.set(zmq::sockopt::curve_publickey, options.curve_own.public_key);
    socket.set(zmq::sockopt::curve_secretkey, options.curve_own.secret_key);
  }
  if (watch) watch->attach(context, socket);
  socket.connect(endpoint);
  return socket;
}

void HandshakeWatch::attach(zmq::context_t& context, zmq::socket_t& dealer, bool whole_connection) {
  whole_connection_ = whole_connection;
  const std::string endpoint =
      "inproc://llava-handshake-" + std::to_string(reinterpret_cast<uintptr_t>(dealer.handle()));
  const int events = ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                     ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                     ZMQ_EVENT_DISCONNECTED | (whole_connection ? ZMQ_EVENT_CONNECT_RETRIED : 0);
  if (zmq_socket_monitor(dealer.handle(), endpoint.c_str(), events) != 0) throw zmq::error_t();
  monitor_ = zmq::socket_t(context, zmq::socket_type::pair);
  monitor_.connect(endpoint);
}

std::optional<std::string> HandshakeWatch::failure(const std::string& server,
                                                   const std::string& after_handshake) {
  std::vector<zmq::message_t> parts;  // [uint16 event, uint32 value][endpoint]
  while (zmq::recv_multipart(monitor_, std::back_inserter(parts), zmq::recv_flags::dontwait)) {
    if (parts.empty() || parts[0].size() < 6) {
      parts.clear();
      continue;
    }
    uint16_t event = 0;
    uint32_t value = 0;
    std::memcpy(&event, parts[0].data(), sizeof event);
    std::memcpy(&value, static_cast<const char*>(parts[0].data()) + sizeof event, sizeof value);
    const std::string where = !server.empty() ? server : parts.size() > 1 ? parts[1].to_string() : "the server";
    parts.clear();
    switch (event) {
      case ZMQ_EVENT_CONNECT_RETRIED:
        return "nobody listens at " + where + " (the connection was refused); is it running?";
      case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
        succeeded_ = true;
        break;
      case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
        return where + " refused this client's key (ZAP status " + std::to_string(value) + ")";
      case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return "handshake with " + where + " failed: its security does not match this client's " +
               "(CURVE on one side only?; ZeroMQ protocol error " + std::to_string(value) + ")";
      // A server that cannot read our CURVE hello hangs up. After a good handshake a
      // disconnect is a server that went away: it may come back, unless the whole
      // connection is watched.
      case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
      case ZMQ_EVENT_DISCONNECTED:
        if (!succeeded_)
          return where +
                 " closed the connection during the handshake (CURVE on one side only, or a wrong "
                 "server key?)";
        if (whole_connection_) return where + " closed the connection" + (after_handshake.empty() ? "" : ": " + after_handshake);
        break;
      default:
        break;
    }
  }
  return std::nullopt;
}

SendResult try_send_parts(zmq::socket_t& socket, std::vector<zmq::message_t>&& parts,
                          const zmq::message_t* routing_id) {
  try {
    if (routing_id) {
      zmq::message_t id(routing_id->data(), routing_id->size());
      // A ROUTER with ZMQ_ROUTER_MANDATORY says EAGAIN (an empty result here) for a peer at
      // its high-water mark and EHOSTUNREACH for a peer it does not know.
      if (!socket.send(id, zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
        return SendResult::kBusy;
      }
    }
    for (size_t i = 0; i < parts.size(); ++i) {
      auto flags = i + 1 < parts.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
      // Later parts of a started message never block: ZeroMQ queues a message whole.
      if (!socket.send(parts[i], flags | zmq::send_flags::dontwait)) return SendResult::kBusy;
    }
    return SendResult::kSent;
  } catch (const zmq::error_t& e) {
    if (e.num() == EAGAIN) return SendResult::kBusy;
    if (e.num() == EHOSTUNREACH) return SendResult::kGone;
    throw;
  }
}

bool send_parts(zmq::socket_t& socket, std::vector<zmq::message_t>&& parts,
                const zmq::message_t* routing_id) {
  return try_send_parts(socket, std::move(parts), routing_id) == SendResult::kSent;
}

bool send_message(zmq::socket_t& socket, wire::Outgoing& message,
                  const zmq::message_t* routing_id) {
  return send_parts(socket, message.parts(), routing_id);
}

std::optional<std::vector<zmq::message_t>> receive_parts(zmq::socket_t& socket,
                                                          std::chrono::milliseconds timeout) {
  zmq::pollitem_t item{socket.handle(), 0, ZMQ_POLLIN, 0};
  try {
    zmq::poll(&item, 1, timeout);
  } catch (const zmq::error_t& e) {
    if (e.num() == EINTR) return std::nullopt;  // a signal (SIGTERM starts a drain): look again later
    throw;
  }
  if (!(item.revents & ZMQ_POLLIN)) return std::nullopt;
  std::vector<zmq::message_t> parts;
  if (!zmq::recv_multipart(socket, std::back_inserter(parts), zmq::recv_flags::dontwait)) {
    return std::nullopt;
  }
  return parts;
}

}  // namespace llava
