// CURVE keys, key files, and the allow-list: a listed key gets through, an unlisted key
// or a peer without CURVE does not (fail closed).
#include "common/curve.h"

#include <gtest/gtest.h>

#include <fstream>

#include "common/errors.h"
#include "common/transport.h"

namespace {

using llava::CurveKey;

std::string temp(const std::string& name) { return testing::TempDir() + name; }

TEST(Curve, KeyFilesRoundTripAndBadFilesNameThemselves) {
  const CurveKey key = llava::generate_curve_key();
  EXPECT_EQ(key.public_key.size(), 40u);
  EXPECT_EQ(key.secret_key.size(), 40u);
  llava::write_curve_key(temp("alice"), key);
  CurveKey both = llava::read_curve_key(temp("alice.key_secret"), true);
  EXPECT_EQ(both.public_key, key.public_key);
  EXPECT_EQ(both.secret_key, key.secret_key);
  CurveKey only_public = llava::read_curve_key(temp("alice.key"), false);
  EXPECT_EQ(only_public.public_key, key.public_key);
  EXPECT_TRUE(only_public.secret_key.empty());
  try {
    llava::read_curve_key(temp("alice.key"), true);
    FAIL() << "a public key file gave a secret";
  } catch (const llava::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("alice.key: no secret-key line"), std::string::npos) << e.what();
  }
  std::ofstream(temp("bad.key")) << "curve\n    public-key = \"too short\"\n";
  try {
    llava::read_curve_key(temp("bad.key"), false);
    FAIL() << "a malformed key was read";
  } catch (const llava::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("bad.key: public-key is not a 40-character Z85 key"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(llava::read_curve_key(temp("missing.key"), false), llava::ConfigError);
}

// One message from a dealer set up with `options`; true if the router got it in time.
bool delivered(zmq::context_t& context, zmq::socket_t& router, const std::string& endpoint,
               const llava::TransportOptions& options, std::chrono::milliseconds wait) {
  auto dealer = llava::connect_dealer(context, endpoint, options);
  std::vector<zmq::message_t> parts;
  parts.emplace_back(std::string("hello"));
  llava::send_parts(dealer, std::move(parts));
  auto got = llava::receive_parts(router, wait);
  return got && got->back().to_string() == "hello";
}

TEST(Curve, OnlyListedKeysReachTheCoordinatorsSocket) {
  const CurveKey server = llava::generate_curve_key(), listed = llava::generate_curve_key(),
                 stranger = llava::generate_curve_key();
  zmq::context_t context;
  llava::ZapHandler zap(context, {listed.public_key});
  llava::TransportOptions server_options;
  server_options.curve = true;
  server_options.curve_own = server;
  auto router = llava::bind_router(context, "tcp://127.0.0.1:*", server_options);
  const std::string endpoint = llava::last_endpoint(router);

  llava::TransportOptions client;
  client.curve = true;
  client.curve_server_public_key = server.public_key;
  client.curve_own = stranger;
  EXPECT_FALSE(delivered(context, router, endpoint, client, std::chrono::milliseconds(500)));
  llava::TransportOptions plain;  // no CURVE at all
  EXPECT_FALSE(delivered(context, router, endpoint, plain, std::chrono::milliseconds(500)));
  client.curve_own = listed;
  EXPECT_TRUE(delivered(context, router, endpoint, client, std::chrono::milliseconds(5000)));
  EXPECT_GE(zap.refused(), 1);  // the stranger was asked about and refused
}

TEST(Curve, TransportOptionsComeFromTheConfigsKeyFiles) {
  const CurveKey server = llava::generate_curve_key(), worker = llava::generate_curve_key();
  llava::write_curve_key(temp("options-server"), server);
  llava::write_curve_key(temp("options-worker"), worker);
  llava::CoordinatorSection section;
  section.max_message_size = 1234;
  section.curve_server_key = temp("options-server.key_secret");
  section.curve_worker_key = temp("options-worker.key_secret");

  // The coordinator's ROUTER: its own key pair.
  const auto coordinator = llava::transport_options(section, section.curve_server_key);
  EXPECT_TRUE(coordinator.curve);
  EXPECT_EQ(coordinator.max_message_size, 1234u);
  EXPECT_EQ(coordinator.curve_own.secret_key, server.secret_key);
  EXPECT_TRUE(coordinator.curve_server_public_key.empty());
  // A worker's DEALER: its key pair and the coordinator's public key.
  const auto dealer =
      llava::transport_options(section, section.curve_worker_key, section.curve_server_key);
  EXPECT_TRUE(dealer.curve);
  EXPECT_EQ(dealer.curve_own.public_key, worker.public_key);
  EXPECT_EQ(dealer.curve_own.secret_key, worker.secret_key);
  EXPECT_EQ(dealer.curve_server_public_key, server.public_key);
  // No key: no CURVE, the size limit still from the config.
  const auto plain = llava::transport_options(section, "");
  EXPECT_FALSE(plain.curve);
  EXPECT_EQ(plain.max_message_size, 1234u);
  // A socket's own key must be a secret key file.
  try {
    llava::transport_options(section, temp("options-worker.key"));
    FAIL() << "a public key file gave a key pair";
  } catch (const llava::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("options-worker.key: no secret-key line"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
