// Key generation and files, and the allow-list ZAP handler.
#include "common/curve.h"

#include <sys/stat.h>

#include <fstream>
#include <regex>
#include <sstream>

#include "common/errors.h"

namespace llava {
namespace {

std::string decode_z85(const std::string& z85) {
  std::string binary(32, '\0');
  if (z85.size() != 40 || !zmq_z85_decode(reinterpret_cast<uint8_t*>(&binary[0]), z85.c_str())) return {};
  return binary;
}

}  // namespace

CurveKey generate_curve_key() {
  char public_key[41], secret_key[41];
  if (zmq_curve_keypair(public_key, secret_key) != 0) {
    throw std::runtime_error(std::string("cannot make a CURVE key pair: ") + zmq_strerror(zmq_errno()) +
                             " (libzmq built without CURVE?)");
  }
  return {public_key, secret_key};
}

void write_curve_key(const std::string& name, const CurveKey& key) {
  const std::string header = "#   llava-pipe CURVE key (czmq's format)\ncurve\n";
  std::ofstream(name + ".key") << header << "    public-key = \"" << key.public_key << "\"\n";
  const std::string secret = name + ".key_secret";
  std::ofstream(secret) << header << "    public-key = \"" << key.public_key << "\"\n"
                        << "    secret-key = \"" << key.secret_key << "\"\n";
  chmod(secret.c_str(), 0600);
}

CurveKey read_curve_key(const std::string& path, bool need_secret) {
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": cannot open the key file");
  std::stringstream text;
  text << in.rdbuf();
  CurveKey key;
  static const std::regex line(R"re(^\s*(public|secret)-key\s*=\s*"([^"]*)"\s*$)re");
  std::string l;
  while (std::getline(text, l)) {
    std::smatch m;
    if (!std::regex_match(l, m, line)) continue;
    if (decode_z85(m[2]).empty()) {
      throw ConfigError(path + ": " + m[1].str() + "-key is not a 40-character Z85 key");
    }
    (m[1] == "public" ? key.public_key : key.secret_key) = m[2];
  }
  if (key.public_key.empty()) throw ConfigError(path + ": no public-key line");
  if (need_secret && key.secret_key.empty()) {
    throw ConfigError(path + ": no secret-key line (give the NAME.key_secret file)");
  }
  return key;
}

ZapHandler::ZapHandler(zmq::context_t& context, const std::set<std::string>& allowed_z85)
    : socket_(context, zmq::socket_type::rep) {
  for (const auto& z85 : allowed_z85) {
    std::string binary = decode_z85(z85);
    if (!binary.empty()) allowed_.insert(binary);
  }
  socket_.set(zmq::sockopt::linger, 0);
  socket_.bind("inproc://zeromq.zap.01");
  thread_ = std::thread([this] { serve(); });
}

ZapHandler::~ZapHandler() {
  stop_ = true;
  thread_.join();
}

void ZapHandler::serve() {
  zmq::pollitem_t item{static_cast<void*>(socket_), 0, ZMQ_POLLIN, 0};
  while (!stop_) {
    if (zmq::poll(&item, 1, std::chrono::milliseconds(100)) == 0) continue;
    // version, request id, domain, address, identity, mechanism, credentials...
    std::vector<zmq::message_t> request;
    do {
      request.emplace_back();
      if (!socket_.recv(request.back())) return;
    } while (request.back().more());
    const bool allowed = request.size() >= 7 && request[5].to_string() == "CURVE" &&
                         allowed_.count(request[6].to_string()) > 0;
    if (!allowed) ++refused_;
    std::vector<std::string> reply = {"1.0", request.size() > 1 ? request[1].to_string() : "",
                                      allowed ? "200" : "400", allowed ? "OK" : "key not allowed", "", ""};
    for (size_t i = 0; i < reply.size(); ++i) {
      socket_.send(zmq::buffer(reply[i]), i + 1 < reply.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }
}

}  // namespace llava
