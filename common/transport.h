// ZeroMQ sockets as this project uses them: a ROUTER at the coordinator, a DEALER in each
// worker, every option that bounds memory or blocking set in one place, every send checked.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "common/config.h"
#include "common/curve.h"
#include "common/wire.h"

namespace llava {

struct TransportOptions {
  uint64_t max_message_size = 256ull << 20;  // ZMQ_MAXMSGSIZE: larger parts drop the peer
  int linger_ms = 200;                        // how long close() may wait on unsent data
  // CURVE: on the ROUTER the server's key pair (a ZapHandler on the context decides who
  // may connect); on a DEALER its own key pair and `server_public_key`.
  bool curve = false;
  CurveKey curve_own;
  std::string curve_server_public_key;
};

// A socket's options from the config: its size limit (coordinator.max_message_size), and
// CURVE when `own_key` names a secret key file (the socket's key pair); a socket that
// connects also names `server_key`, the server's public key file. No `own_key`: no CURVE.
// The coordinator's ROUTER: (coordinator, coordinator.curve_server_key); a worker's DEALER:
// (coordinator, coordinator.curve_worker_key, coordinator.curve_server_key); serve's ROUTER
// for clients: (coordinator, its --curve-key). Throws ConfigError naming a bad key file.
TransportOptions transport_options(const CoordinatorSection& coordinator,
                                   const std::string& own_key,
                                   const std::string& server_key = "");

// Binds a ROUTER with ZMQ_ROUTER_MANDATORY, so that a send to a peer that is gone is an
// error rather than a silent drop. Throws TransportError naming the endpoint when it
// cannot be bound: in use (also an ipc socket file a live process listens on, which
// ZeroMQ would silently take over), or not a valid address.
zmq::socket_t bind_router(zmq::context_t& context, const std::string& endpoint,
                          const TransportOptions& options);
// The endpoint a bound socket really listens on (resolves tcp://127.0.0.1:* ports).
std::string last_endpoint(zmq::socket_t& socket);

// Watches a DEALER's connection, so that a client learns what means no answer will come
// instead of waiting for it: the server refused it (a key not allowed, CURVE on one side
// only, a wrong server key) or, for a client that wants to know (`ask`), nobody listens, or
// the server hung up after the handshake (what ZeroMQ does with a message over its
// max_message_size). A worker leaves those two out: its coordinator may start later, or
// come back.
class HandshakeWatch {
 public:
  // Before the connect (attach) or after it (watch: events from then on).
  void attach(zmq::context_t& context, zmq::socket_t& dealer, bool whole_connection = false);
  zmq::socket_t& socket() { return monitor_; }  // to poll with the dealer
  // Reads the waiting events: what went wrong, or nullopt. `server` names the peer in the
  // message, `after_handshake` says why a hang-up after a good handshake happened.
  std::optional<std::string> failure(const std::string& server = "",
                                     const std::string& after_handshake = "");

 private:
  zmq::socket_t monitor_;  // PAIR, fed by zmq_socket_monitor
  bool whole_connection_ = false;
  bool succeeded_ = false;
};

// With `watch`, the dealer's handshakes are watched from before the connect.
zmq::socket_t connect_dealer(zmq::context_t& context, const std::string& endpoint,
                             const TransportOptions& options, HandshakeWatch* watch = nullptr);

// What became of a send: queued, refused for now (the peer's queue is at its high-water
// mark: a live but busy peer), or refused for good (no such peer).
enum class SendResult { kSent, kBusy, kGone };
SendResult try_send_parts(zmq::socket_t& socket, std::vector<zmq::message_t>&& parts,
                          const zmq::message_t* routing_id = nullptr);
// Sends [routing id]? parts...; false when the peer is unreachable or the queue is full.
bool send_parts(zmq::socket_t& socket, std::vector<zmq::message_t>&& parts,
                const zmq::message_t* routing_id = nullptr);
bool send_message(zmq::socket_t& socket, wire::Outgoing& message,
                  const zmq::message_t* routing_id = nullptr);

// Messages a socket queues per peer before sends to it report kBusy.
constexpr int kHighWaterMark = 1000;

// Receives one multipart message, or nullopt if none arrives within `timeout`.
std::optional<std::vector<zmq::message_t>> receive_parts(zmq::socket_t& socket,
                                                          std::chrono::milliseconds timeout);

}  // namespace llava
