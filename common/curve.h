// CURVE encryption for tcp:// across hosts: key pairs, key files (czmq's format: a public
// file `NAME.key` and a secret file `NAME.key_secret`), and the ZAP handler that lets in
// only listed client keys. Fail closed: once the coordinator's socket is a CURVE server,
// a peer without CURVE or with an unlisted key never completes the handshake.
#pragma once

#include <atomic>
#include <set>
#include <string>
#include <thread>
#include <zmq.hpp>

namespace llava {

struct CurveKey {
  std::string public_key;  // Z85, 40 characters
  std::string secret_key;  // Z85, 40 characters; empty when only the public key is known
};

// Throws std::runtime_error when libzmq was built without CURVE.
CurveKey generate_curve_key();
// Writes NAME.key (public) and NAME.key_secret (both, mode 0600).
void write_curve_key(const std::string& name, const CurveKey& key);
// Reads a key file; throws ConfigError naming the file and what is wrong. A secret file
// gives both keys; `need_secret` refuses a public-only file.
CurveKey read_curve_key(const std::string& path, bool need_secret);

// Answers ZeroMQ's authentication requests (ZAP, RFC 27) for sockets of `context`:
// CURVE clients whose public key is in `allowed` get 200, everything else 400. Must
// exist before a CURVE server socket binds.
class ZapHandler {
 public:
  ZapHandler(zmq::context_t& context, const std::set<std::string>& allowed_z85);
  ~ZapHandler();
  ZapHandler(const ZapHandler&) = delete;
  ZapHandler& operator=(const ZapHandler&) = delete;

  int refused() const { return refused_; }

 private:
  void serve();

  zmq::socket_t socket_;          // REP on inproc://zeromq.zap.01, used by thread_ only
  std::set<std::string> allowed_;  // 32-byte binary keys
  std::atomic<bool> stop_{false};
  std::atomic<int> refused_{0};
  // The ZAP handler thread: libzmq asks it during every CURVE handshake, from its own I/O
  // thread, and waits for the answer; the coordinator's loop may be busy meanwhile.
  std::thread thread_;
};

}  // namespace llava
