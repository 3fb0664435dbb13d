// The server loop: read ZeroMQ clients and the HTTP front's commands, submit, let the
// coordinator take a turn, stream text back; a client that is gone has its request cancelled.
#include "launch/serve.h"

#include <signal.h>
#include <zmq.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <zmq_addon.hpp>

#include "common/config.h"
#include "common/curve.h"
#include "common/errors.h"
#include "common/transport.h"
#include "common/units.h"
#include "coordinator/coordinator.h"
#include "launch/commands.h"
#include "launch/http_server.h"
#include "launch/metrics.h"
#include "launch/request_json.h"
#include "launch/server_config.h"

namespace llava {
namespace {

void on_signal(int) {
  Coordinator::request_stop();
}

bool send_json(zmq::socket_t& socket, const std::string& routing, const nlohmann::json& body) {
  zmq::message_t id(routing.data(), routing.size());
  std::vector<zmq::message_t> parts;
  parts.emplace_back(json_text(body));
  return send_parts(socket, std::move(parts), &id);
}

struct ServeOptions {
  std::string config_path, listen, curve_key, http_address, probes_address;
  std::set<std::string> allowed;  // clients' public keys
  bool force = false;             // start a plan check says does not fit
};

int serve(const ServeOptions& o) {
  const std::string &listen = o.listen, &curve_key = o.curve_key, &http_address = o.http_address;
  const std::set<std::string>& allowed = o.allowed;
  const bool force = o.force;
  if (listen.empty() && http_address.empty()) {
    throw ConfigError("serve: give --http HOST:PORT, --listen ENDPOINT or both (llava-pipe serve --help)");
  }
#if !LLAVA_PIPE_HTTP
  if (!http_address.empty() || !o.probes_address.empty()) {
    throw ConfigError(std::string(http_address.empty() ? "--probes" : "--http") +
                      ": this llava-pipe was built without cpp-httplib; install libcpp-httplib-dev "
                      "(and libcurl4-openssl-dev for http(s) image URLs) and build again");
  }
#endif
  if (curve_key.empty() != allowed.empty())
    throw ConfigError("serve: --curve-key and --allow go together");
  std::string http_host;
  int http_port = 0;
  if (!http_address.empty()) parse_host_port(http_address, http_host, http_port);
  std::string probes_host;
  int probes_port = 0;
  if (!o.probes_address.empty())
    parse_host_port(o.probes_address, probes_host, probes_port, "--probes");
  std::string yaml_text;
  {
    std::ifstream in(o.config_path);
    if (!in) throw ConfigError(o.config_path + ": cannot read the config file");
    std::stringstream buffer;
    buffer << in.rdbuf();
    yaml_text = buffer.str();
  }
  // The server: section is read by launch/server_config.cpp.
  const PipelineConfig config = parse_config(yaml_text, o.config_path);
  require_fitting_plan(config, force);
  const ServerSection server = parse_server_section(yaml_text, o.config_path);
  // Templates are checked before any worker starts: one outside the Jinja subset is a config error.
  std::unique_ptr<ChatTemplate> chat_template;
  if (!http_address.empty()) {
    chat_template =
        std::make_unique<ChatTemplate>(config.model.checkpoint, config.generation.chat_template);
  }
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  signal(SIGPIPE,
         SIG_IGN);  // a write to a client gone is an error return, not the end of the server
  zmq::context_t context;
  std::optional<zmq::socket_t> clients;
  std::unique_ptr<ZapHandler> zap;  // with CURVE: which clients may connect (before the bind)
  if (!listen.empty()) {
    const TransportOptions options = transport_options(config.coordinator, curve_key);
    if (options.curve) {
      zap = std::make_unique<ZapHandler>(context, allowed);
    } else if (listen.rfind("tcp://", 0) == 0) {
      std::cerr << "llava-pipe: clients on " << listen
                << " are neither authenticated nor encrypted "
                << "(--curve-key, --allow)\n";
    }
    clients.emplace(bind_router(context, listen, options));
  }

  std::unique_ptr<PipelineMetrics> metrics;
  std::unique_ptr<HttpServer> http;
  std::map<uint64_t, std::pair<std::string, nlohmann::json>> owners;  // request -> client, its id
  std::set<uint64_t> gone;  // requests whose client could not be reached
  CoordinatorEvents events;
#if LLAVA_PIPE_HTTP
  events.on_logprobs = [&](uint64_t id, const std::vector<TokenLogprob>& logprobs) {
    if (http) http->on_logprobs(id, logprobs);
  };
#endif
  events.on_text = [&](uint64_t id, const std::string& text) {
    if (metrics) metrics->on_text(id);
#if LLAVA_PIPE_HTTP
    if (http && http->on_text(id, text)) return;
#endif
    auto it = owners.find(id);
    if (it != owners.end() &&
        !send_json(*clients, it->second.first, {{"id", it->second.second}, {"text", text}})) {
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
    nlohmann::json done = {{"id", it->second.second}, {"done", true},       {"ok", r.ok},
                           {"text", r.text},          {"finish", r.finish}, {"tokens", r.tokens}};
    if (r.ok && r.logprobs.size() == r.tokens.size() && !r.logprobs.empty()) {
      done["logprobs"] = logprobs_array(r.logprobs);
    }
    if (!r.ok) {
      done["error"] = r.error;
      done["error_kind"] = error_kind_name(r.error_kind);  // bad_request, overloaded, unavailable, ...
    }
    send_json(*clients, it->second.first, done);
    owners.erase(it);
  };
  events.on_result = [&](const RequestResult& r) {
    if (metrics) metrics->on_result(r);
#if LLAVA_PIPE_HTTP
    if (http && http->on_result(r)) return;
#endif
    deliver(r);
  };
  events.on_lease_event = [&](const LeaseEvent& e) {
    if (metrics) metrics->on_lease_event(e);
  };
  Coordinator coordinator(config, events);
  metrics = std::make_unique<PipelineMetrics>(coordinator.model().image_tokens());
#if LLAVA_PIPE_HTTP
  if (!http_address.empty() || !o.probes_address.empty()) {
    http = std::make_unique<HttpServer>(config, server, *chat_template, config.model.name, *metrics);
    http->on_command = [&coordinator] { coordinator.wake(); };  // a request starts at once
  }
  if (!http_address.empty()) {
    const int port = http->start(http_host, http_port);
    std::cerr << "llava-pipe: serving " << config.path << " over HTTP on http://" << http_host
              << ":" << port << " (chat template: " << chat_template->origin() << ")\n";
  }
  if (!o.probes_address.empty()) {
    const int port = http->start_probes(probes_host, probes_port);
    std::cerr << "llava-pipe: /health and /metrics also on http://" << probes_host << ":" << port
              << "\n";
  }
#endif
  if (clients) {
    std::cerr << "llava-pipe: serving " << config.path << " on " << last_endpoint(*clients) << "\n";
  }
  // Between coordinator turns: ZeroMQ clients, then the HTTP handlers' commands. A posted
  // HTTP command wakes the turn's wait (Coordinator::wake); ZeroMQ clients are read between
  // turns, so with them a turn waits 5 ms at most.
  const auto turn = clients ? std::chrono::milliseconds(5) : std::chrono::milliseconds(50);
  while (true) {
    while (clients) {
      auto parts = receive_parts(*clients, std::chrono::milliseconds(0));
      if (!parts) break;
      const std::string routing = parts->front().to_string();
      JsonRequest request;
      request.generation = config.generation;
      try {
        if (parts->size() < 2) throw RequestError("expected [JSON request, image bytes...]");
        size_t bytes = 0;
        for (size_t i = 1; i < parts->size(); ++i) bytes += (*parts)[i].size();
        if (bytes > config.coordinator.max_message_size) {  // each frame fits, not the whole
          throw RequestError("the request is " + format_bytes(bytes) +
                             "; this server takes at most " +
                             format_bytes(config.coordinator.max_message_size) +
                             " (coordinator.max_message_size)");
        }
        parse_json_request((*parts)[1].to_string(), false, request);
        RequestSpec spec;
        spec.prompt = request.prompt;
        spec.generation = request.generation;
        for (size_t i = 2; i < parts->size(); ++i)
          spec.image_bytes.push_back((*parts)[i].to_string());
        spec.client_id = json_text(request.id);
        const int images = static_cast<int>(spec.image_bytes.size());
        const uint64_t id = coordinator.submit(std::move(spec));
        owners[id] = {routing, request.id};
        if (auto it = early.find(id); it != early.end()) {  // refused at once: answer now
          deliver(it->second);
          early.erase(it);
        } else {
          metrics->on_submitted(id, images);
        }
      } catch (const std::exception& e) {  // bad JSON, bad key: this request alone
        send_json(*clients, routing,
                  {{"id", request.id}, {"done", true}, {"ok", false}, {"error", e.what()}});
      }
    }
#if LLAVA_PIPE_HTTP
    if (http) http->run_commands(coordinator);
    const bool running =
        coordinator.step(http && http->has_commands() ? std::chrono::milliseconds(0) : turn);
#else
    const bool running = coordinator.step(turn);
#endif
    for (uint64_t id : gone) {
      if (coordinator.cancel(id, "cancelled: the client disconnected")) {
        std::cerr << "llava-pipe: request " << id << ": the client disconnected; cancelled\n";
      }
    }
    gone.clear();
    if (!running || coordinator.failed() || (coordinator.stopped_by_signal() && coordinator.idle()))
      break;
  }
#if LLAVA_PIPE_HTTP
  if (http) {
    http->close(coordinator.failed() ? coordinator.fatal_error() : "the server is shutting down");
    http->stop();
  }
#endif
  coordinator.shutdown_workers();
  if (coordinator.failed()) {
    std::cerr << "llava-pipe: " << coordinator.fatal_error() << "\n";
    return kExitRuntime;
  }
  return 0;
}

struct AskOptions {
  std::string endpoint;
  std::optional<std::string> prompt;
  std::vector<std::string> image_paths;
  SamplingFlags sampling;
  TransportOptions transport;  // the CURVE keys, read as the flags are
};

int ask(AskOptions& o) {
  nlohmann::json request = {{"id", 1}};
  if (o.prompt) request["prompt"] = *o.prompt;
  for (const auto& [key, value] : o.sampling) request[key] = value;
  std::vector<std::string> images;
  for (const std::string& path : o.image_paths) {
    std::error_code error;
    if (!std::filesystem::is_regular_file(path, error)) {
      throw ConfigError("ask: --image " + path + ": not a readable file");
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) throw ConfigError("ask: --image " + path + ": cannot read it");
    images.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  TransportOptions& options = o.transport;
  options.curve = !options.curve_server_public_key.empty();
  if (options.curve == options.curve_own.secret_key.empty()) {
    throw ConfigError("ask: --curve-server and --curve-key go together");
  }
  std::vector<zmq::message_t> parts;
  try {
    parts.emplace_back(request.dump());
  } catch (const nlohmann::json::type_error& e) {
    throw ConfigError(std::string("ask: the request is not valid UTF-8 (") + e.what() +
                      "); check --prompt and --stop");
  }
  size_t request_bytes = parts.back().size();
  for (const auto& image : images) {
    parts.emplace_back(image.data(), image.size());
    request_bytes += image.size();
  }
  zmq::context_t context;
  zmq::socket_t server = connect_dealer(context, o.endpoint, options);
  HandshakeWatch watch;  // nobody listening, a refused key, a hang-up: said at once
  watch.attach(context, server, /*whole_connection=*/true);
  send_parts(server, std::move(parts));
  while (true) {
    // The answer, or news of the connection that means it cannot come.
    std::array<zmq::pollitem_t, 2> items = {
        {{server.handle(), 0, ZMQ_POLLIN, 0}, {watch.socket().handle(), 0, ZMQ_POLLIN, 0}}};
    if (zmq::poll(items.data(), items.size(), std::chrono::milliseconds(600000)) == 0) break;
    auto reply = receive_parts(server, std::chrono::milliseconds(0));  // answers first
    if (!reply) {
      if (auto failure = watch.failure(o.endpoint, "the request (" + format_bytes(request_bytes) +
                                                     ") is likely over its coordinator.max_message_size, "
                                                     "or the server stopped")) {
        std::cerr << "llava-pipe: " << *failure << "\n";
        return kExitRuntime;
      }
      continue;
    }
    auto j = nlohmann::json::parse(reply->back().to_string());
    if (j.contains("text") && !j.contains("done"))
      std::cout << j["text"].get<std::string>() << std::flush;
    if (j.value("done", false)) {
      std::cout << "\n";
      if (!j.value("ok", false)) {
        std::cerr << "llava-pipe: " << j.value("error", std::string("failed")) << "\n";
        return kExitRuntime;
      }
      return 0;
    }
  }
  std::cerr << "llava-pipe: no answer from " << o.endpoint << " in 600 s\n";
  return kExitRuntime;
}

}  // namespace

Command add_serve(CLI::App& app) {
  CLI::App* command = app.add_subcommand(
      "serve", "run the pipeline for clients: HTTP (the OpenAI API), ZeroMQ or both");
  command->footer(
      "A ZeroMQ request is [JSON {id, prompt, sampling keys}, image bytes...]; text streams\n"
      "back as JSON. A client that disconnects has its request cancelled.");
  auto o = std::make_shared<ServeOptions>();
  command->add_option("CONFIG", o->config_path, "the pipeline's YAML config")->required();
  command->add_option("--http", o->http_address, "serve the OpenAI API over HTTP here")
      ->type_name("HOST:PORT");
  command
      ->add_option("--probes", o->probes_address,
                   "also answer /health and /metrics here, on threads of their own: a probe is "
                   "answered while every --http connection is taken (Kubernetes, Prometheus)")
      ->type_name("HOST:PORT");
  command->add_option("--listen", o->listen, "serve ZeroMQ clients here, e.g. tcp://0.0.0.0:5600")
      ->type_name("ENDPOINT");
  command->add_option("--curve-key", o->curve_key, "--listen with CURVE: the server's secret key file")
      ->type_name("SERVER.key_secret");
  command
      ->add_option_function<std::vector<std::string>>(
          "--allow",
          [o](const std::vector<std::string>& files) {
            for (const auto& file : files) {
              try {
                o->allowed.insert(read_curve_key(file, false).public_key);
              } catch (const ConfigError& e) {
                throw ConfigError("--allow " + file + ": " + e.what());
              }
            }
          },
          "with --curve-key: a client's public key file let in (again for more)")
      ->type_name("CLIENT.key")
      ->allow_extra_args(false);
  command->add_flag("--force", o->force, "start even if the plan does not fit");
  return [o] { return serve(*o); };
}

Command add_ask(CLI::App& app) {
  CLI::App* command = app.add_subcommand("ask", "a ZeroMQ client of serve: streams the answer to stdout");
  auto o = std::make_shared<AskOptions>();
  command->add_option("ENDPOINT", o->endpoint, "the server's --listen endpoint")->required();
  command->add_option("--image", o->image_paths, "an image of the request (again for more)")
      ->type_name("PATH")
      ->allow_extra_args(false);
  command
      ->add_option_function<std::string>(
          "--prompt", [o](const std::string& prompt) { o->prompt = prompt; }, "the request's text")
      ->type_name("TEXT");
  add_sampling_flags(*command, o->sampling);
  add_checked_option(*command, "--curve-server", "SERVER.key", "the server's public key file (CURVE)",
                     [o](const std::string& file) {
                       o->transport.curve_server_public_key = read_curve_key(file, false).public_key;
                     });
  add_checked_option(*command, "--curve-key", "CLIENT.key_secret",
                     "with --curve-server: this client's secret key file",
                     [o](const std::string& file) { o->transport.curve_own = read_curve_key(file, true); });
  return [o] { return ask(*o); };
}

}  // namespace llava
