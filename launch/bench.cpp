// The benchmark phases, each a batch of requests through one Coordinator (its workers stay
// up between phases in concurrent mode): warm-up; time to first token, one request at a
// time; images/s at batch 1 and at the vision batch; decode at each batch size; then the
// embedding handoff measured on the config's transport, and NVML sampled throughout.
#include "launch/bench.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "common/command_line.h"
#include "common/config.h"
#include "common/errors.h"
#include "common/plan.h"
#include "common/shared_memory.h"
#include "common/transport.h"
#include "common/units.h"
#include "coordinator/coordinator.h"
#include "launch/request_json.h"

namespace llava {
namespace {

// About 32 tokens of text with LLaMA's tokenizer.
const char* kPrompt =
    "Describe this picture in detail: the colours, the objects and where they are, the light, "
    "and anything unusual you can see in it.";

double median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

std::vector<int> parse_list(const std::string& text) {
  std::vector<int> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    try {
      out.push_back(static_cast<int>(whole_number(item, 1, INT_MAX)));
    } catch (const std::invalid_argument&) {
      throw ConfigError("batch sizes are whole numbers of at least 1, got '" + item + "'");
    }
  }
  return out;
}

struct BenchOptions {
  std::string config_path, image, json_path;
  std::vector<int> batches = {1, 8, 32};
  int new_tokens = 64, ttft_runs = 10, vision_batch = 32, throughput = 0;
  SamplingFlags sampling;  // none: greedy, whatever the config says
  bool ignore_eos = false;
};

// nvidia-smi sampling device memory every 100 ms, its peak per device index. Without
// nvidia-smi (a CPU machine) nothing is sampled.
class MemorySampler {
 public:
  MemorySampler() {
    int fds[2];
    if (pipe(fds) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(fds[1], STDOUT_FILENO);
      close(fds[0]);
      close(fds[1]);
      execlp("nvidia-smi", "nvidia-smi", "--query-gpu=index,memory.used",
             "--format=csv,noheader,nounits", "-lms", "100", static_cast<char*>(nullptr));
      _exit(127);
    }
    close(fds[1]);
    reader_ = std::thread([this, fd = fds[0]] {
      FILE* in = fdopen(fd, "r");
      char line[256];
      while (in && std::fgets(line, sizeof line, in)) {
        int index = -1;
        long used = 0;
        if (std::sscanf(line, "%d, %ld", &index, &used) == 2) {
          peak_mib_[index] = std::max(peak_mib_[index], used);
        }
      }
      if (in) std::fclose(in);
    });
  }
  // Stops sampling; the peaks per device index (MiB).
  std::map<int, long> stop() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
    if (reader_.joinable()) reader_.join();
    return peak_mib_;
  }
  ~MemorySampler() { stop(); }

 private:
  pid_t pid_ = -1;
  std::thread reader_;  // reads nvidia-smi's lines so that its pipe never fills
  std::map<int, long> peak_mib_;
};

// One embedding frame, sender -> coordinator's ROUTER -> receiver, as the pipeline passes
// it, one at a time: the median milliseconds of `iterations`. Through the socket: zero-copy
// at the sender, forwarded without a copy at the ROUTER. Through shared memory
// (`shared`): the sender writes the frame into a range of a file in /dev/shm, as the vision
// worker does, and the messages carry the range (the coordinator and the receiver each map
// the file and check the range).
double handoff_ms(const std::string& endpoint_of_config, size_t bytes, int iterations,
                  bool shared = false) {
  zmq::context_t context;
  TransportOptions options;
  options.max_message_size = bytes * 2;
  const bool tcp = endpoint_of_config.rfind("tcp://", 0) == 0;
  auto router = bind_router(context, tcp ? "tcp://127.0.0.1:*"
                                         : "ipc://@llava-bench-handoff-" + std::to_string(getpid()),
                            options);
  const std::string endpoint = last_endpoint(router);
  auto sender = connect_dealer(context, endpoint, options);
  auto receiver = connect_dealer(context, endpoint, options);
  auto hello = [&](zmq::socket_t& dealer) {
    std::vector<zmq::message_t> parts;
    parts.emplace_back(std::string("hello"));
    send_parts(dealer, std::move(parts));
    auto got = receive_parts(router, std::chrono::milliseconds(5000));
    if (!got) throw std::runtime_error("bench: the handoff sockets did not connect");
    return zmq::message_t(got->front().data(), got->front().size());  // routing id
  };
  hello(sender);
  zmq::message_t to_receiver = hello(receiver);
  std::vector<char> payload(bytes, 0x3c);
  std::shared_ptr<SharedMemory> memory = shared ? SharedMemory::create(bytes) : nullptr;
  SharedMemoryMaps sender_maps, receiver_maps;
  const wire::SharedResolver at_router = [&](const schema::Header::Reader&, uint64_t offset,
                                             uint64_t n) {
    return wire::SharedView{SharedMemory::view(memory, offset, n), memory};
  };
  const wire::SharedResolver at_receiver = wire::resolve_through(receiver_maps);
  std::vector<double> times;
  for (int i = 0; i < iterations; ++i) {
    const auto start = std::chrono::steady_clock::now();
    if (!shared) {
      // As the vision worker sends: a frame over memory it keeps (no copy at send).
      std::vector<zmq::message_t> parts;
      parts.emplace_back(
          payload.data(), payload.size(), [](void*, void*) {}, nullptr);
      send_parts(sender, std::move(parts));
      auto got = receive_parts(router, std::chrono::milliseconds(5000));
      if (!got) throw std::runtime_error("bench: a handoff frame was lost");
      std::vector<zmq::message_t> forward;
      forward.emplace_back(std::move(got->back()));
      send_parts(router, std::move(forward), &to_receiver);
      if (!receive_parts(receiver, std::chrono::milliseconds(5000))) {
        throw std::runtime_error("bench: a handoff frame was lost");
      }
    } else {
      auto file = sender_maps.get(memory->path());
      std::memcpy(file->data(), payload.data(), bytes);
      wire::Outgoing answer(1);
      answer.header().getBody().initEmbeddings();
      answer.add_frame(
          wire::shared_frame(file, 0, wire::DType::kU8, {static_cast<int64_t>(bytes)}));
      answer.send_shared_as_ranges();
      send_parts(sender, answer.parts());
      auto got = receive_parts(router, std::chrono::milliseconds(5000));
      if (!got) throw std::runtime_error("bench: a handoff frame was lost");
      auto in = wire::Incoming::parse(std::move(*got), true, wire::Limits{}, at_router);
      wire::Outgoing task(1);
      task.header().getBody().initLanguageTask();
      task.add_frame(std::move(in.frames().front()));
      task.send_shared_as_ranges();
      send_parts(router, task.parts(), &to_receiver);
      auto out = receive_parts(receiver, std::chrono::milliseconds(5000));
      if (!out) throw std::runtime_error("bench: a handoff frame was lost");
      auto read = wire::Incoming::parse(std::move(*out), false, wire::Limits{}, at_receiver);
      if (read.frames().front().bytes.size() != bytes) {
        throw std::runtime_error("bench: the handoff frame arrived short");
      }
    }
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  return median(times);
}

int bench(const BenchOptions& o) {
  const std::string& image = o.image;
  const std::string& json_path = o.json_path;
  const std::vector<int>& batches = o.batches;
  const int new_tokens = o.new_tokens, ttft_runs = o.ttft_runs, vision_batch = o.vision_batch,
            throughput = o.throughput;
  PipelineConfig config = load_config(o.config_path);
  // Every request sends the same image: with the cache on, all but the first would skip
  // the vision stage, and the figures would not be the uncached path's.
  config.coordinator.embedding_cache = 0;
  // Greedy by default (the figures are comparable across configs); with sampling flags,
  // every phase samples with the config's generation section and the flags over it.
  GenerationSection generation = config.generation;
  if (o.sampling.empty()) generation.temperature = 0;
  for (const auto& [key, value] : o.sampling) apply_sampling(key, value, generation);
  generation.ignore_eos = generation.ignore_eos || o.ignore_eos;

  MemorySampler memory;
  std::vector<RequestResult>* sink = nullptr;
  CoordinatorEvents events;
  events.on_result = [&](const RequestResult& r) { sink->push_back(r); };
  Coordinator coordinator(config, events);
  int total = 0, failed = 0;
  std::string first_error;
  // `count` requests submitted together, run until each has its answer.
  auto phase = [&](int count, int max_new_tokens) {
    std::vector<RequestResult> results;
    sink = &results;
    RequestSpec spec;
    spec.image_paths = {image};
    spec.prompt = kPrompt;
    spec.generation = generation;
    spec.generation.max_new_tokens = max_new_tokens;
    for (int i = 0; i < count; ++i) coordinator.submit(spec);
    coordinator.run();
    if (coordinator.failed()) throw std::runtime_error("bench: " + coordinator.fatal_error());
    for (const auto& r : results) {
      ++total;
      if (!r.ok && failed++ == 0) first_error = r.error;
    }
    return results;
  };

  phase(1, 2);  // warm-up: workers start, load, first CUDA graphs
  std::vector<double> ttft, vision_one, encode_one;
  // Where each first token's time went, in order (they add up to it): waiting for a worker;
  // decoding + preprocessing the image; the vision tower and copying out; the embeddings'
  // way back to the coordinator; the handoff to the language stage; the language stage
  // (prefill, the first token, its way back).
  const std::vector<std::string> part_names = {"queue",          "preprocess", "vision_tower",
                                               "to_coordinator", "handoff",    "language"};
  std::vector<std::vector<double>> ttft_parts(part_names.size());
  // Within two of those, the workers' own times: the task's wait in the vision worker
  // before its batch started (within to_coordinator, which is otherwise the two trips), and
  // the language worker's prefill up to its first token (within language, which is
  // otherwise the embeddings' trip to it, its wait and the token's trip back).
  const std::vector<std::string> within_names = {"vision_worker_wait", "language_worker_prefill"};
  std::vector<std::vector<double>> ttft_within(within_names.size());
  int prompt_tokens = 0;
  for (int i = 0; i < ttft_runs; ++i) {
    for (const auto& r : phase(1, 1)) {
      if (!r.ok) continue;
      ttft.push_back(r.first_token_ms);
      vision_one.push_back(r.vision_ms);
      encode_one.push_back(r.encode_ms);
      prompt_tokens = r.prompt_tokens;
      const double parts[] = {r.queue_ms,
                              r.preprocess_ms,
                              r.encode_ms - r.preprocess_ms,
                              r.vision_ms - r.queue_ms - r.encode_ms,
                              r.handoff_ms,
                              r.first_token_ms - r.vision_ms - r.handoff_ms};
      for (size_t p = 0; p < part_names.size(); ++p) ttft_parts[p].push_back(parts[p]);
      const double within[] = {r.vision_wait_ms, r.prefill_ms};  // within_names' order
      for (size_t p = 0; p < within_names.size(); ++p) ttft_within[p].push_back(within[p]);
    }
  }
  // End to end (submission to embeddings at the coordinator) and the vision stage's own
  // time (decode, preprocess, encode, copy out): the sum over the batches it made.
  // The first run of a batch this size warms it (cuDNN's attention plans, the pinned
  // buffer for its embeddings); the second is measured.
  double vision_batch_ms = 0, encode_batch_ms = 0;
  std::set<double> batches_seen;
  phase(vision_batch, 1);
  for (const auto& r : phase(vision_batch, 1)) {
    vision_batch_ms = std::max(vision_batch_ms, r.vision_ms);
    if (r.ok && batches_seen.insert(r.encode_ms).second) encode_batch_ms += r.encode_ms;
  }
  nlohmann::json decode = nlohmann::json::object();
  for (int b : batches) {
    // Each request's own decode rate (tokens after the first over the time after the
    // first), summed over requests that decode together.
    double rate = 0;
    for (const auto& r : phase(b, new_tokens)) {
      const double ms = r.total_ms - r.first_token_ms;
      if (r.ok && r.tokens.size() > 1 && ms > 0) rate += (static_cast<double>(r.tokens.size()) - 1) * 1e3 / ms;
    }
    const int concurrent = std::min(b, config.language.batch_size * config.language.replicas);
    decode["batch" + std::to_string(b)] = {{"tokens_per_s", rate}, {"decoding_together", concurrent}};
  }
  // Throughput: `throughput` requests submitted together, from submission to the last
  // answer (tests/perf/in_process runs the same work in one process).
  nlohmann::json served;
  if (throughput > 0) {
    const auto start = std::chrono::steady_clock::now();
    int generated = 0;
    for (const auto& r : phase(throughput, new_tokens)) generated += r.ok ? static_cast<int>(r.tokens.size()) : 0;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    served = {{"requests", throughput}, {"seconds", s}, {"requests_per_s", throughput / s},
              {"generated_tokens", generated}, {"tokens_per_s", generated / s}};
  }
  std::vector<StageReport> reports = coordinator.reports();
  coordinator.shutdown_workers();
  const std::map<int, long> nvml = memory.stop();

  const size_t frame_bytes = image_embedding_bytes(config, coordinator.model());
  const double handoff = handoff_ms(coordinator.endpoint(), frame_bytes, 50);
  const bool shared = !coordinator.shared_embeddings().id().empty();  // on, and /dev/shm here
  const double shared_handoff =
      shared ? handoff_ms(coordinator.endpoint(), frame_bytes, 50, true) : 0;

  nlohmann::json out;
  out["config"] = config.path;
  out["mode"] = to_string(config.mode);
  out["requests"] = total;
  out["failed"] = failed;
  if (failed) out["first_error"] = first_error;
  out["prompt_tokens"] = prompt_tokens;
  out["new_tokens"] = new_tokens;
  out["sampling"] = nlohmann::json::object();
  for (const auto& [key, value] : o.sampling) out["sampling"][key] = value;
  out["ignore_eos"] = generation.ignore_eos;
  out["ttft_ms"] = {{"median", median(ttft)}, {"runs", ttft.size()}};
  out["ttft_parts_ms"] = nlohmann::json::object();  // medians
  for (size_t p = 0; p < part_names.size(); ++p) out["ttft_parts_ms"][part_names[p]] = median(ttft_parts[p]);
  out["ttft_within_ms"] = nlohmann::json::object();  // medians
  for (size_t p = 0; p < within_names.size(); ++p)
    out["ttft_within_ms"][within_names[p]] = median(ttft_within[p]);
  const std::string vb = "batch" + std::to_string(vision_batch);
  auto per_s = [](double images, double ms) { return ms > 0 ? images * 1e3 / ms : 0.0; };
  out["images_per_s"] = {{"batch1", per_s(1, median(vision_one))}, {vb, per_s(vision_batch, vision_batch_ms)}};
  out["vision_stage_images_per_s"] = {{"batch1", per_s(1, median(encode_one))},
                                      {vb, per_s(vision_batch, encode_batch_ms)},
                                      {vb + "_batches", batches_seen.size()}};
  out["decode"] = decode;
  if (!served.is_null()) out["throughput"] = served;
  out["handoff_ms"] = {{"median", handoff}, {"frame_bytes", frame_bytes}, {"hops", 2}};
  if (shared) out["handoff_ms"]["shared_memory_median"] = shared_handoff;
  // What went through shared memory (coordinator.shared_memory) in this run.
  out["shared_memory"] = {
      {"frames_read", coordinator.shared_embeddings().frames_read()},
      {"language_tasks", coordinator.shared_embeddings().tasks_sent_as_ranges()}};
  out["stages"] = nlohmann::json::array();
  for (const auto& r : reports) {
    out["stages"].push_back({{"process", r.process}, {"device", r.device}, {"load_s", r.load_seconds},
                             {"work_s", r.work_seconds}, {"peak_bytes", r.peak_bytes}, {"restarts", r.restarts}});
  }
  out["nvml_peak_mib"] = nlohmann::json::object();
  for (const auto& [index, mib] : nvml) out["nvml_peak_mib"]["cuda:" + std::to_string(index)] = mib;

  std::printf("llava-pipe bench %s (%s), %d requests, %d failed\n", config.path.c_str(),
              to_string(config.mode), total, failed);
  std::printf("  time to first token (1 image, %d prompt tokens)  %9.1f ms (median of %zu)\n",
              prompt_tokens, median(ttft), ttft.size());
  std::printf("    medians:");
  for (size_t p = 0; p < part_names.size(); ++p) std::printf(" %s %.2f", part_names[p].c_str(), median(ttft_parts[p]));
  std::printf(" ms\n    within them:");
  for (size_t p = 0; p < within_names.size(); ++p)
    std::printf(" %s %.2f", within_names[p].c_str(), median(ttft_within[p]));
  std::printf(" ms\n");
  std::printf("  images/s end to end, batch 1 / batch %d          %9.1f / %.1f\n", vision_batch,
              out["images_per_s"]["batch1"].get<double>(), out["images_per_s"][vb].get<double>());
  std::printf("  images/s in the vision stage, batch 1 / batch %d %9.1f / %.1f (%zu batches)\n", vision_batch,
              out["vision_stage_images_per_s"]["batch1"].get<double>(),
              out["vision_stage_images_per_s"][vb].get<double>(), batches_seen.size());
  for (int b : batches) {
    const auto& d = decode["batch" + std::to_string(b)];
    std::printf("  decode tokens/s, batch %-3d (%d together)          %9.1f\n", b,
                d["decoding_together"].get<int>(), d["tokens_per_s"].get<double>());
  }
  if (!served.is_null()) {
    std::printf("  throughput, %d requests x %d tokens            %9.2f requests/s, %.1f tokens/s\n", throughput,
                new_tokens, served["requests_per_s"].get<double>(), served["tokens_per_s"].get<double>());
  }
  std::printf("  embedding handoff (%s, 2 hops)            %9.3f ms\n", format_bytes(frame_bytes).c_str(), handoff);
  if (shared)
    std::printf("    through shared memory                        %9.3f ms\n", shared_handoff);
  for (const auto& r : reports) {
    std::printf("  %-12s %-8s load %6.2f s, work %7.2f s, peak %s\n", r.process.c_str(), r.device.c_str(),
                r.load_seconds, r.work_seconds, format_bytes(r.peak_bytes).c_str());
  }
  for (const auto& [index, mib] : nvml) std::printf("  cuda:%d NVML peak %ld MiB\n", index, mib);
  std::printf("%s\n", out.dump().c_str());
  if (!json_path.empty()) std::ofstream(json_path) << out.dump(1) << "\n";
  return failed ? kExitRuntime : 0;
}

// A whole number; below `lo` it counts as `lo` (as the flags always have).
int at_least(const std::string& text, int lo) {
  return std::max(lo, static_cast<int>(whole_number(text, 0, INT_MAX)));
}

}  // namespace

Command add_bench(CLI::App& app) {
  CLI::App* command = app.add_subcommand("bench", "measure the pipeline's figures");
  command->footer(
      "Time to first token, images/s, decode tokens/s per batch size, embedding handoff, load\n"
      "time and peak memory per stage and device: a table on stdout, and JSON. Greedy unless\n"
      "sampling flags are given (--temperature, --top-p, ...): then every phase samples\n"
      "with the config's generation section and those flags over it.");
  auto o = std::make_shared<BenchOptions>();
  command->add_option("CONFIG", o->config_path, "the pipeline's YAML config")->required();
  command->add_option("--image", o->image, "the image every request sends")
      ->type_name("PATH")
      ->required();
  command->add_option("--json", o->json_path, "also write the figures there")->type_name("OUT.json");
  add_checked_option(*command, "--batches", "1,8,32", "decode batch sizes to measure",
                     [o](const std::string& v) { o->batches = parse_list(v); });
  add_checked_option(*command, "--new-tokens", "64", "tokens per request (at least 2)",
                     [o](const std::string& v) { o->new_tokens = at_least(v, 2); });
  add_checked_option(*command, "--ttft-runs", "10", "requests timed one at a time for TTFT",
                     [o](const std::string& v) { o->ttft_runs = at_least(v, 1); });
  add_checked_option(*command, "--vision-batch", "32", "images encoded together for images/s",
                     [o](const std::string& v) { o->vision_batch = at_least(v, 1); });
  add_checked_option(*command, "--throughput", "N", "N requests at once for requests/s (0: off)",
                     [o](const std::string& v) { o->throughput = at_least(v, 0); });
  add_sampling_flags(*command, o->sampling);
  command->add_flag("--ignore-eos", o->ignore_eos,
                    "answers run to --new-tokens past the end-of-sequence token");
  return [o] { return bench(*o); };
}

}  // namespace llava
