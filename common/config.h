// The pipeline config: one struct per YAML section, parsed and validated in load_config(),
// then passed by const reference. Nothing else in the project reads YAML.
#pragma once

#include <cstdint>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "common/sampling.h"

namespace llava {

// auto: concurrent when both stages fit on their device together (the language batch may
// shrink to min_batch for it), else sequential; resolved by common/plan.h's resolve_mode.
enum class Mode { kSequential, kConcurrent, kAuto };
// How a sequential stage gives its device back: its process exits; it frees the model and
// keeps the process; or it keeps its weights in pinned host memory (the next turn copies
// them back). auto: offload where the host has the memory for it, else exit (resolved by
// common/plan.h's resolve_release).
enum class Release { kExit, kUnload, kOffload, kAuto };
enum class WeightDType { kFloat32, kFloat16, kBFloat16 };
enum class Quantize { kNone, kInt8, kInt4 };  // weight-only, of the language stage's linears
enum class Offload { kNone, kLayers };        // kLayers: decoder layers streamed from host

const char* to_string(Mode mode);
const char* to_string(Release release);
const char* to_string(WeightDType dtype);
const char* to_string(Quantize quantize);
const char* to_string(Offload offload);
size_t element_size(WeightDType dtype);

struct ModelSection {
  std::string checkpoint;  // folder in the llava-hf layout, resolved against the config's folder
  WeightDType dtype = WeightDType::kFloat16;
  std::string name;  // what clients see (/v1/models); default: the checkpoint folder's name
};

struct StageSection {
  std::string name;                  // "vision" or "language"
  int replicas = 1;
  std::vector<std::string> devices;  // "cpu" or "cuda:N"; replica i runs on devices[i % size]
  uint64_t memory_limit = 0;         // bytes; 0 means no limit
  int batch_size = 8;
  Release release = Release::kAuto;  // sequential mode only
  // external: the processes are started by a cluster manager (Slurm, Kubernetes...), on
  // any host, with `llava-stage --config C --stage S --replica N --endpoint E`; the
  // coordinator waits for them, never starts or kills them, and takes them back whenever
  // they register (again). Concurrent mode only.
  bool external = false;
  int max_context = 0;               // language: tokens per sequence; 0 = model's maximum
  int prefill_chunk = 1024;          // language: prompt tokens per forward pass
  int min_batch = 4;                 // language, mode auto: the smallest batch it runs together at
  bool cuda_graphs = true;           // decode steps / small vision batches as CUDA graphs (CUDA only)
  Quantize quantize = Quantize::kNone;  // language only
  Offload offload = Offload::kNone;     // language only
};

struct CoordinatorSection {
  // {pid}: the coordinator's pid; {rundir}: a new folder only this user can enter (made at
  // start, removed at the end), so that no other user can connect to a local pipeline.
  std::string endpoint = "ipc://{rundir}/coordinator";
  uint64_t heartbeat_interval_ms = 500;
  int liveness = 3;                         // missed beats before a worker is declared dead
  uint64_t embedding_memory = 1ull << 30;   // host bytes for waiting embeddings, then spill
  uint64_t embedding_cache = 512ull << 20;  // host bytes of embeddings kept by image; 0 = off
  std::string spill_dir = "/tmp";
  // Per vision worker that sees this host's /dev/shm: a file its embeddings cross in
  // instead of the socket (coordinator/shared_embeddings.h); 0 = off.
  uint64_t shared_memory = 32ull << 20;  // 7 images of LLaVA-1.5-7B; Docker's /dev/shm is 64 MB
  uint64_t max_message_size = 256ull << 20;
  int max_restarts_per_minute = 5;          // within restart_window; past it the stage fails
  uint64_t restart_window_ms = 60000;       // sliding: the budget recovers as deaths age out
  int queue_capacity = 4096;                // requests waiting; past it requests are refused
  uint64_t drain_timeout_ms = 30000;        // on SIGTERM: time for work in flight to finish
  // Sequential mode's leases are lazy: a stage keeps the device until the other stage has
  // work. It gives way at once when it has nothing left to start; with work of its own,
  // once swap_batch requests wait for the other stage (0: that stage's batch_size) or the
  // oldest of them has waited swap_after.
  uint64_t swap_after_ms = 1000;
  int swap_batch = 0;
  // A stage whose every worker is external and unregistered for this long fails the
  // requests that need it (they would wait for a worker nobody starts); 0 = wait forever.
  uint64_t external_wait_ms = 120000;
  // CURVE encryption (optional; key files resolved against the config's folder): the
  // coordinator's secret key file, the secret key file of the workers it starts, and
  // public key files of other workers let in. Nothing else can connect.
  std::string curve_server_key;
  std::string curve_worker_key;
  std::vector<std::string> curve_allowed;
  bool curve() const { return !curve_server_key.empty(); }
};

// The sampling keys (common/sampling.h, read there for the file and for a request) and
// the text's: the chat template and the stop strings.
struct GenerationSection : SamplingParams {
  // {images} becomes one "<image>\n" per image; {prompt} the user's text.
  std::string chat_template = "USER: {images}{prompt} ASSISTANT:";
  // Generation ends where one of these first appears; the text ends before it.
  std::vector<std::string> stop;
  // Past the model's end-of-sequence tokens, up to max_new_tokens (vLLM's ignore_eos, as its
  // benchmarks send it; a request key only).
  bool ignore_eos = false;
};

// The one range check of the YAML file's numbers and a request's: lo <= value <= hi (lo <
// value when lo_open), never for NaN.
template <typename T>
bool in_range(T value, T lo, T hi, bool lo_open = false) {
  return value >= lo && value <= hi && !(lo_open && value == lo);
}

// The range as errors print it: "[lo, hi]", or "(lo, hi]" when lo_open.
template <typename T>
std::string range_text(T lo, T hi, bool lo_open = false) {
  std::ostringstream text;
  text << (lo_open ? "(" : "[") << lo << ", " << hi << "]";
  return text.str();
}

// Why these stop strings cannot be used, or "" if they can: at most 16, each 1-256 bytes.
std::string stop_strings_problem(const std::vector<std::string>& stop);

struct PipelineConfig {
  std::string path;  // the YAML file this came from
  Mode mode = Mode::kAuto;
  bool share_devices = false;                  // concurrent: several processes on one device
  std::map<std::string, uint64_t> device_memory;  // optional: known capacity per device
  ModelSection model;
  StageSection vision;
  StageSection language;
  CoordinatorSection coordinator;
  GenerationSection generation;
};

// Parses and validates; throws ConfigError whose message starts with "file:line:column:"
// and names the key. `check_files` = false skips checks that the checkpoint exists.
PipelineConfig load_config(const std::string& path, bool check_files = true);
PipelineConfig parse_config(const std::string& yaml_text, const std::string& path_for_errors,
                            bool check_files = true);

// "cpu" or "cuda:N"; throws ConfigError otherwise.
bool is_valid_device(const std::string& device);

}  // namespace llava
