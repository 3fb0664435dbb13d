// Soak: a seeded random mix of valid, invalid and cancelled requests through the real
// pipeline (coordinator here, llava-stage workers), in waves, with a worker killed every
// so often. Asserts, and prints as JSON: no request lost, none answered twice, every
// valid answer token-for-token equal to in-process generation, and flat coordinator RSS,
// file descriptors and spill files across waves.
//   soak [--requests N] [--wave W] [--kill-every K] [--seed S]
// ctest runs a short version; the README gives the long one's command and figures.
#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "common/config.h"
#include "coordinator/coordinator.h"
#include "pipeline/in_process.h"

namespace {

using llava::test::kBinary;
using llava::test::kImages;
using llava::test::kModel;
using llava::test::run_command;

// ASan keeps freed memory in quarantine (up to 256 MB), so RSS grows in a sanitizer build
// whatever the code does; there LeakSanitizer checks for leaks instead.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kRssIsMeaningful = false;
#else
constexpr bool kRssIsMeaningful = true;
#endif

constexpr int kNewTokens = 6;

struct Case {
  std::string prompt;
  std::vector<std::string> images;
  std::vector<int32_t> expected;
};


size_t count_entries(const std::string& dir, const std::string& prefix = "") {
  size_t n = 0;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) n += std::string(e->d_name).rfind(prefix, 0) == 0 && e->d_name[0] != '.';
    closedir(d);
  }
  return n;
}

long resident_kib() {
  long pages = 0, resident = 0;
  std::ifstream("/proc/self/statm") >> pages >> resident;
  return resident * sysconf(_SC_PAGESIZE) / 1024;
}

}  // namespace

int main(int argc, char** argv) {
  int requests = 200, wave = 50, kill_every = 40;
  unsigned seed = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string arg = argv[i];
    const int value = std::atoi(argv[i + 1]);
    if (arg == "--requests") requests = value;
    if (arg == "--wave") wave = value;
    if (arg == "--kill-every") kill_every = value;
    if (arg == "--seed") seed = static_cast<unsigned>(value);
  }
  const std::string spill = "/tmp/llava-soak-spill-" + std::to_string(getpid());
  run_command("mkdir -p " + spill);
  const std::string config_path = "/tmp/llava-soak-" + std::to_string(getpid()) + ".yaml";
  std::ofstream(config_path)
      << "mode: sequential\nmodel: {checkpoint: " << kModel << ", dtype: float32}\n"
      << "stages: {vision: {devices: cpu, batch_size: 8}, language: {devices: cpu, batch_size: 8, "
         "max_context: 256}}\n"
      << "coordinator: {endpoint: 'ipc://@llava-soak-{pid}', heartbeat_interval: 100ms, liveness: 5, "
         "max_restarts_per_minute: 1000, embedding_memory: 8KiB, spill_dir: " << spill << "}\n"
      << "generation: {max_new_tokens: " << kNewTokens << "}\n";
  const std::string corrupt = "/tmp/llava-soak-corrupt-" + std::to_string(getpid()) + ".jpg";
  std::ofstream(corrupt) << "\xff\xd8\xff\xe0 not a JPEG at all";

  std::vector<Case> valid = {
      {"What is in the picture?", {kImages + "img01_320x240_RGB.jpg"}, {}},
      {"Describe it.", {kImages + "img11_200x150_RGBA.png"}, {}},
      {"Compare.", {kImages + "img02_240x320_RGB.jpg", kImages + "img09_400x300_L.jpg"}, {}},
      {"Say something.", {}, {}},
      {"And this?", {kImages + "img13_180x120_P.gif"}, {}},
  };
  llava::PipelineConfig config = llava::load_config(config_path);
  std::mt19937 rng(seed);
  std::map<std::string, int> kinds;
  int lost = 0, duplicated = 0, wrong = 0, kills = 0;
  long rss_first = 0, rss_last = 0;
  size_t fds_first = 0, fds_last = 0;
  int done_total = 0;
  int since_kill = 0;  // answers since the last kill, across waves (a kill every N answers)

  for (int submitted = 0, wave_index = 0; submitted < requests; ++wave_index) {
    std::map<uint64_t, int> answers;
    std::map<uint64_t, std::string> kind_of;
    std::map<uint64_t, const Case*> case_of;
    std::map<uint64_t, llava::RequestResult> results;
    llava::Coordinator* self = nullptr;
    llava::CoordinatorEvents events;
    events.on_result = [&](const llava::RequestResult& r) {
      ++answers[r.id];
      results[r.id] = r;
      if (++since_kill >= kill_every && self) {  // kill whichever worker is running
        since_kill = 0;
        for (const char* process : {"language-0", "vision-0"}) {
          if (self->pid_of(process) > 0) {
            kill(self->pid_of(process), SIGKILL);
            ++kills;
            break;
          }
        }
      }
    };
    if (std::getenv("SOAK_VERBOSE")) {
      events.on_lease_event = [](const llava::LeaseEvent& e) {
        std::fprintf(stderr, "[%8.3f] %s %s %s\n", e.seconds, e.process.c_str(), e.what.c_str(), e.detail.c_str());
      };
    }
    llava::Coordinator coordinator(config, events, kBinary + "/llava-stage");
    self = &coordinator;
    if (valid[0].expected.empty()) {  // in-process generation, once per case
      for (auto& c : valid) {
        c.expected = llava::test::generate_in_process(coordinator, config.generation.chat_template, c.prompt,
                                                      c.images, kModel, kNewTokens);
      }
    }
    std::vector<uint64_t> to_cancel;
    for (int i = 0; i < wave && submitted < requests; ++i, ++submitted) {
      llava::RequestSpec spec;
      spec.generation = config.generation;
      const int dice = static_cast<int>(rng() % 100);
      std::string kind;
      const Case* c = nullptr;
      if (dice < 70) {
        kind = "valid";
        c = &valid[rng() % valid.size()];
        spec.prompt = c->prompt;
        spec.image_paths = c->images;
      } else if (dice < 78) {
        kind = "corrupt image";
        spec.prompt = "x";
        spec.image_paths = {corrupt};
      } else if (dice < 84) {
        kind = "missing image";
        spec.prompt = "x";
        spec.image_paths = {kImages + "missing.png"};
      } else if (dice < 90) {
        kind = "prompt too long";
        spec.prompt = std::string(2000, 'z');
      } else {
        kind = "cancelled";
        spec.prompt = valid[0].prompt;
        spec.image_paths = valid[0].images;
      }
      const uint64_t id = coordinator.submit(spec);
      kind_of[id] = kind;
      case_of[id] = c;
      ++kinds[kind];
      if (kind == "cancelled") to_cancel.push_back(id);
    }
    for (uint64_t id : to_cancel) coordinator.cancel(id);
    coordinator.run();
    coordinator.shutdown_workers();
    for (const auto& [id, kind] : kind_of) {
      auto it = answers.find(id);
      if (it == answers.end()) {
        ++lost;
        continue;
      }
      duplicated += it->second > 1;
      ++done_total;
      const auto& r = results[id];
      const bool good = kind == "valid" ? (r.ok && r.tokens == case_of[id]->expected)
                                        : (!r.ok && !r.error.empty());
      if (!good) {
        ++wrong;
        std::fprintf(stderr, "request %llu (%s): ok=%d error='%s'\n", static_cast<unsigned long long>(id),
                     kind.c_str(), r.ok, r.error.c_str());
      }
    }
    rss_last = resident_kib();
    fds_last = count_entries("/proc/self/fd");
    if (wave_index == 0) rss_first = rss_last, fds_first = fds_last;
  }
  const size_t spill_left = count_entries(spill, "llava-pipe-embeddings-");
  std::printf(
      "{\"soak\": {\"requests\": %d, \"answered\": %d, \"lost\": %d, \"duplicated\": %d, "
      "\"wrong\": %d, \"worker_kills\": %d, \"valid\": %d, \"corrupt_image\": %d, "
      "\"missing_image\": %d, \"prompt_too_long\": %d, \"cancelled\": %d, "
      "\"rss_kib_after_first_wave\": %ld, \"rss_kib_after_last_wave\": %ld, "
      "\"fds_after_first_wave\": %zu, \"fds_after_last_wave\": %zu, \"spill_files_left\": %zu}}\n",
      requests, done_total, lost, duplicated, wrong, kills, kinds["valid"], kinds["corrupt image"],
      kinds["missing image"], kinds["prompt too long"], kinds["cancelled"], rss_first, rss_last,
      fds_first, fds_last, spill_left);
  run_command("rm -rf " + spill + " " + config_path + " " + corrupt);
  const bool ok = lost == 0 && duplicated == 0 && wrong == 0 && kills > 0 && spill_left == 0 &&
                  fds_last <= fds_first + 2 && (!kRssIsMeaningful || rss_last <= rss_first + 20 * 1024);
  std::printf("%s\n", ok ? "soak: ok" : "soak: FAILED");
  return ok ? 0 : 1;
}
