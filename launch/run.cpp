// `llava-pipe run CONFIG`: one request streamed to stdout, or a JSONL batch. A batch is
// read a line at a time and fed to the coordinator as room frees up (at most
// coordinator.queue_capacity lines between the oldest unwritten result and the newest line
// read), so a file of any length runs in bounded memory; results are written in input order.
// Exit codes: 0 every request answered, 3 some batch lines failed, 1 a runtime failure
// (the pipeline, a signal, the output file), 2 bad config or usage.
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <optional>

#include "common/errors.h"
#include "common/units.h"
#include "coordinator/coordinator.h"
#include "launch/batch_file.h"
#include "launch/commands.h"
#include "launch/request_json.h"

namespace llava {
namespace {

void on_signal(int) { Coordinator::request_stop(); }

void print_reports(const Coordinator& coordinator) {
  std::fprintf(stderr, "\n%-12s %-8s %9s %9s %12s %9s\n", "process", "device", "load s", "work s",
               "peak memory", "restarts");
  for (const auto& r : coordinator.reports()) {
    std::fprintf(stderr, "%-12s %-8s %9.3f %9.3f %12s %9d\n", r.process.c_str(), r.device.c_str(),
                 r.load_seconds, r.work_seconds, format_bytes(r.peak_bytes).c_str(), r.restarts);
  }
  rusage self{};
  getrusage(RUSAGE_SELF, &self);  // ru_maxrss: KiB
  std::fprintf(stderr, "coordinator peak host memory: %s\n",
               format_bytes(static_cast<uint64_t>(self.ru_maxrss) * 1024).c_str());
  const SharedEmbeddings& shared = coordinator.shared_embeddings();
  std::fprintf(stderr,
               "embeddings through shared memory: %llu images from the vision stage, %llu "
               "language tasks\n",
               static_cast<unsigned long long>(shared.frames_read()),
               static_cast<unsigned long long>(shared.tasks_sent_as_ranges()));
}

void print_lease_event(const LeaseEvent& e) {
  std::fprintf(stderr, "[%8.3f s] %s %s on %s%s%s\n", e.seconds, e.process.c_str(), e.what.c_str(),
               e.device.c_str(), e.detail.empty() ? "" : ": ", e.detail.c_str());
}

struct RunOptions {
  std::string config_path;
  SamplingFlags sampling;
  PipelineConfig config;  // read once the line is parsed, the sampling flags applied
  RequestSpec single;
  bool have_prompt = false, verbose = false, force = false;
  std::string requests_path, output_path;
};

// The config, with the sampling flags over its generation section.
void prepare(RunOptions& o) {
  o.config = load_config(o.config_path);
  for (const auto& [key, value] : o.sampling) apply_sampling(key, value, o.config.generation);
  o.single.generation = o.config.generation;
  const bool batch = !o.requests_path.empty();
  if (batch == o.have_prompt || (batch && o.output_path.empty())) {
    throw ConfigError("give --prompt, or --requests with --output (llava-pipe run --help)");
  }
}

// How the coordinator's run ended, as an exit code (0 when it did not fail).
int pipeline_exit_code(const Coordinator& coordinator) {
  if (coordinator.failed()) {
    std::cerr << "llava-pipe: " << coordinator.fatal_error() << "\n";
    return kExitRuntime;
  }
  if (coordinator.stopped_by_signal()) {
    std::cerr << "llava-pipe: stopped by a signal\n";
    return kExitRuntime;
  }
  return 0;
}

int run_single(RunOptions& o) {
  bool ok = true;
  std::string error;
  CoordinatorEvents events;
  events.on_text = [](uint64_t, const std::string& text) {
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  };
  events.on_result = [&](const RequestResult& r) {
    ok = r.ok;
    error = r.error;
  };
  if (o.verbose) events.on_lease_event = print_lease_event;
  Coordinator coordinator(o.config, events);
  coordinator.submit(o.single);
  coordinator.run();
  std::fputc('\n', stdout);
  coordinator.shutdown_workers();
  print_reports(coordinator);
  if (int code = pipeline_exit_code(coordinator)) return code;
  if (!ok) {
    std::cerr << "llava-pipe: the request failed: " << error << "\n";
    return kExitRuntime;
  }
  return 0;
}

// Progress on stderr: a line rewritten in place on a terminal, every tenth otherwise.
class Progress {
 public:
  explicit Progress(size_t total) : total_(total), tty_(isatty(STDERR_FILENO)) {}
  void add(const RequestResult& r, size_t images) {
    ++done_;
    tokens_ += r.tokens.size();
    if (r.ok) images_ += images;
    show(false);
  }
  void add_failed_line() {
    ++done_;
    show(false);
  }
  void show(bool last) const {
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    if (!tty_ && !last && done_ % std::max<size_t>(1, total_ / 10) != 0) return;
    const double rate = done_ / std::max(elapsed, 1e-9);
    std::fprintf(stderr, "%s%zu/%zu done, %.1f images/s, %.1f tokens/s, ETA %.0f s%s", tty_ ? "\r" : "",
                 done_, total_, images_ / std::max(elapsed, 1e-9), tokens_ / std::max(elapsed, 1e-9),
                 rate > 0 && total_ > done_ ? (total_ - done_) / rate : 0.0, tty_ && !last ? "" : "\n");
  }

 private:
  size_t total_, done_ = 0, tokens_ = 0, images_ = 0;
  bool tty_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

int run_batch(RunOptions& o) {
  BatchReader reader(o.requests_path, o.config.generation);
  ResultFile output(o.output_path, o.requests_path);
  Progress progress(BatchReader::count_lines(o.requests_path));
  // Lines read and not yet written, by their index in the file's order.
  std::map<size_t, BatchLine> lines;
  std::map<size_t, nlohmann::json> results;  // answered, waiting for earlier lines
  size_t next = 0, written = 0, failed = 0;
  auto answer = [&](size_t index, const RequestResult& r) {
    const BatchLine& line = lines.at(index);
    if (!r.ok) ++failed;
    results[index] = result_json(line, r);
    progress.add(r, line.spec.image_paths.size());
  };
  auto write_ready = [&] {
    for (auto it = results.begin(); it != results.end() && it->first == written; it = results.erase(it)) {
      output.write_line(json_text(it->second));
      lines.erase(written++);
    }
  };
  CoordinatorEvents events;
  events.on_result = [&](const RequestResult& r) { answer(std::stoul(r.client_id), r); };
  if (o.verbose) events.on_lease_event = print_lease_event;
  Coordinator coordinator(o.config, events);
  const size_t window = static_cast<size_t>(o.config.coordinator.queue_capacity);
  bool end_of_file = false, running = true;
  // Lines left unread when the run stops early get this error.
  std::string stop_reason = "cancelled: the pipeline is shutting down";
  // Lines are submitted for at most a quarter of a heartbeat interval between steps, so
  // that a big window (thousands of lines) never keeps the loop from its workers.
  const auto feed_time = std::chrono::milliseconds(o.config.coordinator.heartbeat_interval_ms / 4);
  while (true) {
    const auto fed_until = std::chrono::steady_clock::now() + feed_time;
    while (running && !end_of_file && next - written < window && !coordinator.stopped_by_signal() &&
           std::chrono::steady_clock::now() < fed_until) {
      std::optional<BatchLine> line = reader.next();
      if (!line) {
        end_of_file = true;
        break;
      }
      const size_t index = next++;
      line->spec.client_id = std::to_string(index);
      lines[index] = std::move(*line);
      if (!lines[index].error.empty()) {
        RequestResult refused;
        refused.error = lines[index].error;
        answer(index, refused);
        continue;
      }
      coordinator.submit(lines[index].spec);  // may be answered at once (a bad image path)
    }
    write_ready();
    if (!running || ((end_of_file || coordinator.stopped_by_signal()) && coordinator.idle())) break;
    running = coordinator.step(std::chrono::milliseconds(o.config.coordinator.heartbeat_interval_ms / 4));
    if (!running && coordinator.failed()) stop_reason = "not run: " + coordinator.fatal_error();
  }
  // A stop (a signal, a fatal error): every line not read yet still gets its one result.
  for (std::optional<BatchLine> line; !end_of_file && (line = reader.next());) {
    const size_t index = next++;
    lines[index] = std::move(*line);
    RequestResult stopped;
    stopped.error = lines[index].error.empty() ? stop_reason : lines[index].error;
    answer(index, stopped);
    write_ready();
  }
  write_ready();
  output.commit();
  progress.show(true);
  coordinator.shutdown_workers();
  print_reports(coordinator);
  if (int code = pipeline_exit_code(coordinator)) return code;
  if (failed > 0) {
    std::cerr << "llava-pipe: " << failed << " of " << written << " requests failed (their lines in "
              << o.output_path << " have \"ok\": false and the error)\n";
    return kExitSomeFailed;
  }
  return 0;
}

int run(RunOptions& o) {
  prepare(o);
  require_fitting_plan(o.config, o.force);
  // Workers print LibTorch's backtraces (otherwise left out of their one-line errors).
  if (o.verbose) setenv("LLAVA_PIPE_VERBOSE", "1", 1);
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  return o.requests_path.empty() ? run_single(o) : run_batch(o);
}

}  // namespace

Command add_run(CLI::App& app) {
  CLI::App* command = app.add_subcommand(
      "run", "run one request (--prompt), its answer streamed to stdout, or a batch (--requests)");
  command->footer(
      "A batch (--requests IN.jsonl --output OUT.jsonl) has one JSON object a line: {\"id\",\n"
      "\"image\" or \"images\", \"prompt\", sampling keys}; image paths are relative to IN.jsonl's\n"
      "folder. One result line per request, in input order, with its \"line\"; exit code 3 when\n"
      "some lines failed (each has \"ok\": false and its error), 0 when all succeeded.\n"
      "run refuses a plan check says does not fit (exit 2) unless --force is given.");
  auto o = std::make_shared<RunOptions>();
  command->add_option("CONFIG", o->config_path, "the pipeline's YAML config")->required();
  command->add_option("--image", o->single.image_paths, "an image of the request (again for more)")
      ->type_name("PATH")
      ->allow_extra_args(false);
  command
      ->add_option_function<std::string>(
          "--prompt",
          [o](const std::string& prompt) {
            o->single.prompt = prompt;
            o->have_prompt = true;
          },
          "the request's text")
      ->type_name("TEXT");
  command->add_option("--requests", o->requests_path, "a batch: one JSON request a line")
      ->type_name("IN.jsonl");
  command->add_option("--output", o->output_path, "the batch's results, one JSON line each")
      ->type_name("OUT.jsonl");
  add_sampling_flags(*command, o->sampling);
  command->add_flag("--verbose", o->verbose,
                    "print each worker start, lease grant, release, exit and death on stderr");
  command->add_flag("--force", o->force, "start even if the plan does not fit");
  return [o] { return run(*o); };
}

}  // namespace llava
