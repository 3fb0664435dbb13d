// The server loop: read clients, submit, let the coordinator take a turn, stream text back;
// a send to a client that is gone (ROUTER_MANDATORY: unroutable) cancels its request.
#include "launch/serve.h"

#include <signal.h>

#include <array>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "common/config.h"
#include "common/curve.h"
#include "common/errors.h"
#include "common/transport.h"
#include "coordinator/coordinator.h"
#include "launch/request_json.h"

namespace llava {
namespace {

void on_signal(int) { Coordinator::request_stop(); }

bool send_json(zmq::socket_t& socket, const std::string& routing, const nlohmann::json& body) {
  zmq::message_t id(routing.data(), routing.size());
  std::vector<zmq::message_t> parts;
  parts.emplace_back(json_text(body));
  return send_parts(socket, std::move(parts), &id);
}

}  // namespace

int serve(const std::vector<std::string>& args) {
  const char* usage =
      "usage: llava-pipe serve CONFIG --listen ENDPOINT [--curve-key SERVER.key_secret --allow "
      "CLIENT.key...]";
  if (args.size() < 3 || args.size() % 2 == 0) throw ConfigError(usage);
  const PipelineConfig config = load_config(args[0]);
  std::string listen, curve_key;
  std::set<std::string> allowed;  // clients' public keys
  for (size_t i = 1; i + 1 < args.size(); i += 2) {
    if (args[i] == "--listen") {
      listen = args[i + 1];
    } else if (args[i] == "--curve-key") {
      curve_key = args[i + 1];
    } else if (args[i] == "--allow") {
      allowed.insert(read_curve_key(args[i + 1], false).public_key);
    } else {
      throw ConfigError(std::string(usage) + " (unknown option " + args[i] + ")");
    }
  }
  if (listen.empty()) throw ConfigError(usage);
  if (curve_key.empty() != allowed.empty())
    throw ConfigError("serve: --curve-key and --allow go together");
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  zmq::context_t context;
  TransportOptions options;
  options.max_message_size = config.coordinator.max_message_size;
  std::unique_ptr<ZapHandler> zap;  // with CURVE: which clients may connect (before the bind)
  if (!curve_key.empty()) {
    options.curve = true;
    options.curve_own = read_curve_key(curve_key, true);
    zap = std::make_unique<ZapHandler>(context, allowed);
  } else if (listen.rfind("tcp://", 0) == 0) {
    std::cerr << "llava-pipe: clients on " << listen << " are neither authenticated nor encrypted "
              << "(--curve-key, --allow)\n";
  }
  zmq::socket_t clients = bind_router(context, listen, options);

  std::map<uint64_t, std::pair<std::string, nlohmann::json>> owners;  // request -> client, its id
  std::set<uint64_t> gone;  // requests whose client could not be reached
  CoordinatorEvents events;
  events.on_text = [&](uint64_t id, const std::string& text) {
    auto it = owners.find(id);
    if (it != owners.end() && !send_json(clients, it->second.first, {{"id", it->second.second}, {"text", text}})) {
      gone.insert(id);  // cancelled after this turn (not from inside the coordinator's)
    }
  };
  std::map<uint64_t, RequestResult> early;  // answered inside submit(), before its owner is known
  auto deliver = [&](const RequestResult& r) {
    auto it = owners.find(r.id);
    if (it == owners.end()) {
      early[r.id] = r;
      return;
    }
    nlohmann::json done = {{"id", it->second.second}, {"done", true}, {"ok", r.ok}, {"text", r.text},
                           {"finish", r.finish}, {"tokens", r.tokens}};
    if (!r.ok) done["error"] = r.error;
    send_json(clients, it->second.first, done);
    owners.erase(it);
  };
  events.on_result = deliver;
  Coordinator coordinator(config, events);
  std::cerr << "llava-pipe: serving " << config.path << " on " << last_endpoint(clients) << "\n";
  while (true) {
    while (auto parts = receive_parts(clients, std::chrono::milliseconds(0))) {
      const std::string routing = parts->front().to_string();
      JsonRequest request;
      request.generation = config.generation;
      try {
        if (parts->size() < 2) throw RequestError("expected [JSON request, image bytes...]");
        parse_json_request((*parts)[1].to_string(), false, request);
        RequestSpec spec;
        spec.prompt = request.prompt;
        spec.generation = request.generation;
        for (size_t i = 2; i < parts->size(); ++i) spec.image_bytes.push_back((*parts)[i].to_string());
        spec.client_id = json_text(request.id);
        const uint64_t id = coordinator.submit(spec);
        owners[id] = {routing, request.id};
        if (auto it = early.find(id); it != early.end()) {  // refused at once: answer now
          deliver(it->second);
          early.erase(it);
        }
      } catch (const std::exception& e) {  // bad JSON, bad key: this request alone
        send_json(clients, routing,
                  {{"id", request.id}, {"done", true}, {"ok", false}, {"error", e.what()}});
      }
    }
    const bool running = coordinator.step(std::chrono::milliseconds(5));
    for (uint64_t id : gone) {
      if (coordinator.cancel(id, "cancelled: the client disconnected")) {
        std::cerr << "llava-pipe: request " << id << ": the client disconnected; cancelled\n";
      }
    }
    gone.clear();
    if (!running || coordinator.failed() || (coordinator.stopped_by_signal() && coordinator.idle())) break;
  }
  coordinator.shutdown_workers();
  if (coordinator.failed()) {
    std::cerr << "llava-pipe: " << coordinator.fatal_error() << "\n";
    return kExitRuntime;
  }
  return 0;
}

int ask(const std::vector<std::string>& args) {
  if (args.empty()) {
    throw ConfigError(
        "usage: llava-pipe ask ENDPOINT [--image PATH]... --prompt TEXT [SAMPLING] "
        "[--curve-server SERVER.key --curve-key CLIENT.key_secret]");
  }
  nlohmann::json request = {{"id", 1}};
  std::vector<std::string> images;
  TransportOptions options;
  for (size_t i = 1; i < args.size(); ++i) {
    if (i + 1 >= args.size()) throw ConfigError("ask: " + args[i] + " needs a value");
    const std::string key = args[i].substr(args[i].rfind('-') == std::string::npos ? 0 : 2);
    const std::string& value = args[++i];
    if (key == "curve-server") {
      options.curve_server_public_key = read_curve_key(value, false).public_key;
    } else if (key == "curve-key") {
      options.curve_own = read_curve_key(value, true);
    } else if (key == "image") {
      std::ifstream in(value, std::ios::binary);
      if (!in) throw ConfigError("ask: cannot read " + value);
      images.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    } else if (key == "prompt") {
      request["prompt"] = value;
    } else {
      std::string name = key;
      for (auto& c : name) c = c == '-' ? '_' : c;
      request[name] = nlohmann::json::parse(value);
    }
  }
  options.curve = !options.curve_server_public_key.empty();
  if (options.curve == options.curve_own.secret_key.empty()) {
    throw ConfigError("ask: --curve-server and --curve-key go together");
  }
  zmq::context_t context;
  HandshakeWatch watch;
  zmq::socket_t server = connect_dealer(context, args[0], options, &watch);
  std::vector<zmq::message_t> parts;
  try {
    parts.emplace_back(request.dump());
  } catch (const nlohmann::json::type_error& e) {
    throw ConfigError(std::string("ask: the request is not valid UTF-8 (") + e.what() +
                      "); check --prompt and --stop");
  }
  for (const auto& image : images) parts.emplace_back(image.data(), image.size());
  send_parts(server, std::move(parts));
  while (true) {
    // The answer, or a handshake the server refused (an answer that can never come).
    std::array<zmq::pollitem_t, 2> items = {
        {{server.handle(), 0, ZMQ_POLLIN, 0}, {watch.socket().handle(), 0, ZMQ_POLLIN, 0}}};
    if (zmq::poll(items.data(), items.size(), std::chrono::milliseconds(600000)) == 0) break;
    if (auto failure = watch.failure()) {
      std::cerr << "llava-pipe: " << *failure << "\n";
      return kExitRuntime;
    }
    auto reply = receive_parts(server, std::chrono::milliseconds(0));
    if (!reply) continue;
    auto j = nlohmann::json::parse(reply->back().to_string());
    if (j.contains("text") && !j.contains("done")) std::cout << j["text"].get<std::string>() << std::flush;
    if (j.value("done", false)) {
      std::cout << "\n";
      if (!j.value("ok", false)) {
        std::cerr << "llava-pipe: " << j.value("error", std::string("failed")) << "\n";
        return kExitRuntime;
      }
      return 0;
    }
  }
  std::cerr << "llava-pipe: no answer from " << args[0] << "\n";
  return kExitRuntime;
}

}  // namespace llava
