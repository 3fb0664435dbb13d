// The `llava-pipe` command: check a config and print its plan; run a pipeline on one
// request (streamed to stdout) or on a JSONL batch. Exit codes: 0 ok, 1 runtime failure,
// 2 bad config or usage.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/curve.h"
#include "common/errors.h"
#include "common/model_config.h"
#include "common/plan.h"
#include "common/units.h"
#include "coordinator/coordinator.h"
#include "launch/bench.h"
#include "launch/request_json.h"
#include "launch/serve.h"

namespace {

const char* kUsage =
    "usage:\n"
    "  llava-pipe check CONFIG\n"
    "      validate CONFIG and print the plan: processes, devices, when each holds its\n"
    "      device, predicted peak memory; exits 2 if the config is bad or cannot fit\n"
    "  llava-pipe run CONFIG [--image PATH]... --prompt TEXT [SAMPLING]\n"
    "      run one request and stream the answer to stdout\n"
    "  llava-pipe run CONFIG --requests IN.jsonl --output OUT.jsonl [SAMPLING]\n"
    "      run a batch: one JSON object a line {\"id\", \"image\" or \"images\", \"prompt\",\n"
    "      sampling keys}; image paths are relative to IN.jsonl's folder; one result line\n"
    "      per request, in input order\n"
    "  llava-pipe bench CONFIG --image PATH [--json OUT.json] [--batches 1,8,32]\n"
    "                  [--new-tokens 64] [--ttft-runs 10] [--vision-batch 32] [--throughput N]\n"
    "      measure the pipeline: time to first token, images/s, decode tokens/s per batch\n"
    "      size, embedding handoff, load time and peak memory per stage and device\n"
    "  llava-pipe serve CONFIG --listen ENDPOINT [--curve-key SERVER.key_secret --allow "
    "CLIENT.key...]\n"
    "      run the pipeline for clients (ZeroMQ, e.g. tcp://0.0.0.0:5600): a request is\n"
    "      [JSON {id, prompt, sampling keys}, image bytes...]; text streams back as JSON;\n"
    "      a client that disconnects has its request cancelled\n"
    "  llava-pipe ask ENDPOINT [--image PATH]... --prompt TEXT [--max-new-tokens N ...]\n"
    "                 [--curve-server SERVER.key --curve-key CLIENT.key_secret]\n"
    "      a client of serve: streams the answer to stdout\n"
    "  llava-pipe keygen NAME\n"
    "      write a CURVE key pair: NAME.key (public) and NAME.key_secret (mode 0600), for\n"
    "      coordinator.curve in a config\n"
    "  --verbose: print each worker start, lease grant, release, exit and death on stderr\n"
    "  SAMPLING: --max-new-tokens N --temperature T --top-k K --top-p P\n"
    "            --repetition-penalty R --seed S --stop JSON (a string or a list of strings)\n"
    "            (defaults: the config's generation section)\n";

int check(const std::vector<std::string>& args) {
  if (args.size() != 1) throw llava::ConfigError(std::string("check takes one CONFIG\n") + kUsage);
  llava::PipelineConfig config = llava::load_config(args[0]);
  llava::LlavaConfig model;
  try {
    model = llava::load_llava_config(config.model.checkpoint);
  } catch (const llava::CheckpointError& e) {
    throw llava::ConfigError(config.path + ": model.checkpoint: " + e.what());
  }
  llava::Plan plan = llava::make_plan(config, model);
  std::cout << llava::describe(plan, config, model);
  if (!plan.problems.empty()) return llava::kExitUsage;
  std::cout << "\nok: the plan fits\n";
  return 0;
}

void print_reports(const llava::Coordinator& coordinator) {
  std::fprintf(stderr, "\n%-12s %-8s %9s %9s %12s %9s\n", "process", "device", "load s",
               "work s", "peak memory", "restarts");
  for (const auto& r : coordinator.reports()) {
    std::fprintf(stderr, "%-12s %-8s %9.3f %9.3f %12s %9d\n", r.process.c_str(), r.device.c_str(),
                 r.load_seconds, r.work_seconds, llava::format_bytes(r.peak_bytes).c_str(),
                 r.restarts);
  }
}

void on_signal(int) { llava::Coordinator::request_stop(); }

struct BatchLine {
  llava::RequestSpec spec;
  std::string error;  // the line could not become a request
  nlohmann::json id;
};

std::vector<BatchLine> read_batch(const std::string& path, const llava::GenerationSection& defaults) {
  std::ifstream in(path);
  if (!in) throw llava::ConfigError(path + ": cannot open the requests file");
  const std::filesystem::path folder = std::filesystem::path(path).parent_path();
  std::vector<BatchLine> lines;
  std::string text;
  for (int number = 1; std::getline(in, text); ++number) {
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    BatchLine line;
    const std::string where = path + ":" + std::to_string(number) + ": ";
    llava::JsonRequest request;
    request.id = number;
    request.generation = defaults;
    try {
      llava::parse_json_request(text, true, request);
      line.spec.prompt = request.prompt;
      line.spec.generation = request.generation;
      for (const auto& p : request.image_paths) {
        std::filesystem::path image(p);
        line.spec.image_paths.push_back(image.is_relative() ? (folder / image).string() : p);
      }
    } catch (const llava::RequestError& e) {
      line.error = where + e.what();
    }
    line.id = request.id;
    line.spec.client_id = std::to_string(lines.size());  // its index: results go in input order
    lines.push_back(std::move(line));
  }
  return lines;
}

nlohmann::json result_json(const nlohmann::json& id, const llava::RequestResult& r) {
  nlohmann::json out = {{"id", id}, {"ok", r.ok}};
  if (r.ok) {
    out["text"] = r.text;
    out["finish"] = r.finish;
    out["prompt_tokens"] = r.prompt_tokens;
    out["generated_tokens"] = r.tokens.size();
    out["attempts"] = r.attempts;
    out["cached_images"] = r.cached_images;
    out["timings_ms"] = {{"vision", r.vision_ms}, {"first_token", r.first_token_ms}, {"total", r.total_ms}};
  } else {
    out["error"] = r.error;
  }
  return out;
}

int run(std::vector<std::string> args) {
  if (args.empty()) throw llava::ConfigError(std::string("run needs a CONFIG\n") + kUsage);
  llava::PipelineConfig config = llava::load_config(args[0]);
  llava::RequestSpec single;
  single.generation = config.generation;
  std::string requests_path, output_path;
  bool have_prompt = false, verbose = false;
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--verbose") {
      verbose = true;
      continue;
    }
    if (i + 1 >= args.size()) throw llava::ConfigError(arg + " needs a value\n" + kUsage);
    const std::string value = args[++i];
    try {
      if (arg == "--image") {
        single.image_paths.push_back(value);
      } else if (arg == "--prompt") {
        single.prompt = value, have_prompt = true;
      } else if (arg == "--requests") {
        requests_path = value;
      } else if (arg == "--output") {
        output_path = value;
      } else if (arg.rfind("--", 0) == 0) {
        std::string key = arg.substr(2);
        std::replace(key.begin(), key.end(), '-', '_');
        llava::apply_sampling(key, nlohmann::json::parse(value), single.generation);
        config.generation = single.generation;
      } else {
        throw llava::ConfigError("unexpected argument '" + arg + "'\n" + kUsage);
      }
    } catch (const std::exception& e) {
      if (dynamic_cast<const llava::ConfigError*>(&e)) throw;
      throw llava::ConfigError(arg + " " + value + ": " + e.what());
    }
  }
  const bool batch = !requests_path.empty();
  if (batch == have_prompt || (batch && output_path.empty())) {
    throw llava::ConfigError(std::string("give --prompt, or --requests with --output\n") + kUsage);
  }
  std::vector<BatchLine> lines;
  if (batch) lines = read_batch(requests_path, config.generation);

  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  std::vector<std::optional<nlohmann::json>> results(lines.size());
  std::ofstream output;
  size_t written = 0, done = 0, tokens = 0, images = 0;
  bool single_ok = true;
  std::string single_error;
  const auto start = std::chrono::steady_clock::now();
  const bool tty = isatty(STDERR_FILENO);
  auto progress = [&](bool last) {
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!tty && !last && done % std::max<size_t>(1, lines.size() / 10) != 0) return;
    const double rate = done / std::max(elapsed, 1e-9);
    std::fprintf(stderr, "%s%zu/%zu done, %.1f images/s, %.1f tokens/s, ETA %.0f s%s",
                 tty ? "\r" : "", done, lines.size(), images / std::max(elapsed, 1e-9),
                 tokens / std::max(elapsed, 1e-9),
                 rate > 0 ? (lines.size() - done) / rate : 0.0, tty && !last ? "" : "\n");
  };
  llava::CoordinatorEvents events;
  if (batch) {
    output.open(output_path);
    if (!output) throw llava::ConfigError(output_path + ": cannot write");
    events.on_result = [&](const llava::RequestResult& r) {
      const size_t index = std::stoul(r.client_id);
      results[index] = result_json(lines[index].id, r);
      ++done;
      tokens += r.tokens.size();
      if (r.ok) images += lines[index].spec.image_paths.size();  // answered requests' images
      while (written < results.size() && results[written]) {  // keep input order
        output << llava::json_text(*results[written]) << "\n";
        ++written;
      }
      output.flush();
      progress(false);
    };
  } else {
    events.on_text = [](uint64_t, const std::string& text) {
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fflush(stdout);
    };
    events.on_result = [&](const llava::RequestResult& r) {
      single_ok = r.ok;
      single_error = r.error;
    };
  }
  if (verbose) {
    events.on_lease_event = [](const llava::LeaseEvent& e) {
      std::fprintf(stderr, "[%8.3f s] %s %s on %s%s%s\n", e.seconds, e.process.c_str(), e.what.c_str(),
                   e.device.c_str(), e.detail.empty() ? "" : ": ", e.detail.c_str());
    };
  }
  llava::Coordinator coordinator(config, events);
  if (batch) {
    for (size_t i = 0; i < lines.size(); ++i) {
      if (!lines[i].error.empty()) {
        llava::RequestResult failed;
        failed.error = lines[i].error;
        results[i] = result_json(lines[i].id, failed);
        ++done;
        continue;
      }
      coordinator.submit(lines[i].spec);  // may finish at once (bad image path)
    }
    while (written < results.size() && results[written])
      output << llava::json_text(*results[written++]) << "\n";
  } else {
    coordinator.submit(single);
  }
  coordinator.run();
  if (batch) {
    progress(true);
  } else {
    std::fputc('\n', stdout);
  }
  coordinator.shutdown_workers();
  print_reports(coordinator);
  if (coordinator.failed()) {
    std::cerr << "llava-pipe: " << coordinator.fatal_error() << "\n";
    return llava::kExitRuntime;
  }
  if (coordinator.stopped_by_signal()) {
    std::cerr << "llava-pipe: stopped by a signal\n";
    return llava::kExitRuntime;
  }
  if (!batch && !single_ok) {
    std::cerr << "llava-pipe: the request failed: " << single_error << "\n";
    return llava::kExitRuntime;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    std::cout << kUsage;
    return args.empty() ? llava::kExitUsage : 0;
  }
  const std::string command = args[0];
  args.erase(args.begin());
  try {
    if (command == "check") return check(args);
    if (command == "run") return run(args);
    if (command == "bench") return llava::bench(args);
    if (command == "serve") return llava::serve(args);
    if (command == "ask") return llava::ask(args);
    if (command == "keygen") {
      if (args.size() != 1) throw llava::ConfigError(std::string("keygen takes one NAME\n") + kUsage);
      llava::write_curve_key(args[0], llava::generate_curve_key());
      std::cout << "wrote " << args[0] << ".key and " << args[0] << ".key_secret\n";
      return 0;
    }
    std::cerr << "llava-pipe: unknown command '" << command << "'\n" << kUsage;
    return llava::kExitUsage;
  } catch (const llava::ConfigError& e) {
    std::cerr << "llava-pipe: " << e.what() << "\n";
    return llava::kExitUsage;
  } catch (const std::exception& e) {
    std::cerr << "llava-pipe: " << e.what() << "\n";
    return llava::kExitRuntime;
  }
}
