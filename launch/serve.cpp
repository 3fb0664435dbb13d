// The server loop: read clients, submit, let the coordinator take a turn, stream text back;
// a send to a client that is gone (ROUTER_MANDATORY: unroutable) cancels its request.
#include "launch/serve.h"

#include <signal.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "common/config.h"
#include "common/errors.h"
#include "common/transport.h"
#include "coordinator/coordinator.h"
#include "launch/sampling.h"

namespace llava {
namespace {

void on_signal(int) { Coordinator::request_stop(); }

bool send_json(zmq::socket_t& socket, const std::string& routing, const nlohmann::json& body) {
  zmq::message_t id(routing.data(), routing.size());
  std::vector<zmq::message_t> parts;
  parts.emplace_back(body.dump());
  return send_parts(socket, std::move(parts), &id);
}

}  // namespace

int serve(const std::vector<std::string>& args) {
  if (args.size() != 3 || args[1] != "--listen") throw ConfigError("usage: llava-pipe serve CONFIG --listen ENDPOINT");
  const PipelineConfig config = load_config(args[0]);
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  zmq::context_t context;
  TransportOptions options;
  options.max_message_size = config.coordinator.max_message_size;
  zmq::socket_t clients = bind_router(context, args[2], options);

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
      nlohmann::json client_id;
      try {
        if (parts->size() < 2) throw RequestError("expected [JSON request, image bytes...]");
        auto j = nlohmann::json::parse((*parts)[1].to_string());
        if (!j.is_object()) throw RequestError("the request must be a JSON object");
        RequestSpec spec;
        spec.generation = config.generation;
        for (const auto& [key, value] : j.items()) {
          if (key == "id") client_id = value;
          else if (key == "prompt") spec.prompt = value.get<std::string>();
          else apply_sampling(key, value, spec.generation);
        }
        for (size_t i = 2; i < parts->size(); ++i) spec.image_bytes.push_back((*parts)[i].to_string());
        spec.client_id = client_id.dump();
        const uint64_t id = coordinator.submit(spec);
        owners[id] = {routing, client_id};
        if (auto it = early.find(id); it != early.end()) {  // refused at once: answer now
          deliver(it->second);
          early.erase(it);
        }
      } catch (const std::exception& e) {  // bad JSON, bad key: this request alone
        send_json(clients, routing, {{"id", client_id}, {"done", true}, {"ok", false}, {"error", e.what()}});
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
  if (args.empty()) throw ConfigError("usage: llava-pipe ask ENDPOINT [--image PATH]... --prompt TEXT [SAMPLING]");
  nlohmann::json request = {{"id", 1}};
  std::vector<std::string> images;
  for (size_t i = 1; i < args.size(); ++i) {
    if (i + 1 >= args.size()) throw ConfigError("ask: " + args[i] + " needs a value");
    const std::string key = args[i].substr(args[i].rfind('-') == std::string::npos ? 0 : 2);
    const std::string& value = args[++i];
    if (key == "image") {
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
  zmq::context_t context;
  zmq::socket_t server = connect_dealer(context, args[0], TransportOptions{});
  std::vector<zmq::message_t> parts;
  parts.emplace_back(request.dump());
  for (const auto& image : images) parts.emplace_back(image.data(), image.size());
  send_parts(server, std::move(parts));
  while (auto reply = receive_parts(server, std::chrono::milliseconds(600000))) {
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
