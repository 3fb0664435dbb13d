// The `llava-pipe` command: dispatches to its subcommands (check.cpp, run.cpp, serve.cpp,
// bench.cpp). Exit codes: 0 ok, 1 runtime failure, 2 bad config or usage, 3 (run --requests)
// some lines failed.
#include <iostream>
#include <string>
#include <vector>

#include "common/curve.h"
#include "common/errors.h"
#include "launch/bench.h"
#include "launch/commands.h"
#include "launch/serve.h"

namespace llava {

const char* const kUsage =
    "usage:\n"
    "  llava-pipe check CONFIG [--workers]\n"
    "      validate CONFIG and print the plan: processes, devices, when each holds its\n"
    "      device, predicted peak memory, the GPUs nvidia-smi shows; exits 2 if the config\n"
    "      is bad or cannot fit. --workers: one line per worker, STAGE<TAB>REPLICA<TAB>DEVICE\n"
    "  llava-pipe run CONFIG [--image PATH]... --prompt TEXT [SAMPLING]\n"
    "      run one request and stream the answer to stdout\n"
    "  llava-pipe run CONFIG --requests IN.jsonl --output OUT.jsonl [SAMPLING]\n"
    "      run a batch: one JSON object a line {\"id\", \"image\" or \"images\", \"prompt\",\n"
    "      sampling keys}; image paths are relative to IN.jsonl's folder; one result line\n"
    "      per request, in input order, with its \"line\"; exit code 3 when some lines\n"
    "      failed (each has \"ok\": false and its error), 0 when all succeeded\n"
    "      run refuses a plan check says does not fit (exit 2) unless --force is given\n"
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

}  // namespace llava

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "-h" || args[0] == "--help") {
    std::cout << llava::kUsage;
    return args.empty() ? llava::kExitUsage : 0;
  }
  const std::string command = args[0];
  args.erase(args.begin());
  try {
    if (command == "check") return llava::check(args);
    if (command == "run") return llava::run(args);
    if (command == "bench") return llava::bench(args);
    if (command == "serve") return llava::serve(args);
    if (command == "ask") return llava::ask(args);
    if (command == "keygen") {
      if (args.size() != 1) throw llava::ConfigError(std::string("keygen takes one NAME\n") + llava::kUsage);
      llava::write_curve_key(args[0], llava::generate_curve_key());
      std::cout << "wrote " << args[0] << ".key and " << args[0] << ".key_secret\n";
      return 0;
    }
    std::cerr << "llava-pipe: unknown command '" << command << "'\n" << llava::kUsage;
    return llava::kExitUsage;
  } catch (const llava::ConfigError& e) {
    std::cerr << "llava-pipe: " << e.what() << "\n";
    return llava::kExitUsage;
  } catch (const std::exception& e) {
    std::cerr << "llava-pipe: " << e.what() << "\n";
    return llava::kExitRuntime;
  }
}
