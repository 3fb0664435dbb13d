// The stage of a kind, and how a stage's errors reach the user: one line each, and the
// errors that end the process.
#include "stages/stage.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string_view>

#include "common/errors.h"
#include "common/units.h"
#include "stages/language/language_stage.h"
#include "stages/vision/vision_stage.h"

namespace llava {
namespace {

// LibTorch's out-of-memory text: "... Tried to allocate 86.00 MiB. GPU ..."
constexpr std::string_view kTriedToAllocate = "Tried to allocate ";
// How far into the size to start looking for the sentence's end, past the size's own
// decimal point.
constexpr size_t kPastTheDecimalPoint = 4;

const char* memory_knobs(StageKind kind) {
  return kind == StageKind::kVision
             ? "lower stages.vision.batch_size, or raise memory_limit"
             : "lower stages.language.batch_size or max_context, or set quantize: int8 "
               "(or int4) or offload: layers, or raise memory_limit";
}

}  // namespace

std::unique_ptr<Stage> make_stage(const StageContext& context, StageSink& sink) {
  switch (context.kind) {
    case StageKind::kVision:
      return std::make_unique<VisionStage>(context, sink);
    case StageKind::kLanguage:
      return std::make_unique<LanguageStage>(context, sink);
  }
  throw ConfigError("no stage of this kind");
}

// LibTorch's messages carry a C++ backtrace (26 frames for an out-of-memory): that goes to
// this worker's stderr under --verbose only.
void offload_weights(WeightOffload& offload, const WeightOffload::Visit& visit, const StageContext& context) {
  const bool first = offload.bytes() == 0;
  const auto start = std::chrono::steady_clock::now();
  offload.offload(visit);
  if (first && offload.bytes() > 0) {  // later offloads reuse this copy: no transfer
    const double took = seconds(std::chrono::steady_clock::now() - start);
    std::cerr << "llava-stage: " << context.who << ": " << format_bytes(offload.bytes())
              << " of weights copied to host memory in " << took << " s (once: later turns reuse the copy)\n";
  }
}

void restore_weights(WeightOffload& offload, const WeightOffload::Visit& visit, const StageContext& context) {
  const auto start = std::chrono::steady_clock::now();
  offload.restore(visit, context.tensor_options.device());
  const double took = seconds(std::chrono::steady_clock::now() - start);
  if (offload.bytes() == 0) return;
  std::cerr << "llava-stage: " << context.who << ": " << format_bytes(offload.bytes())
            << " of weights back on the device in " << took << " s ("
            << static_cast<double>(offload.bytes()) / std::max(took, 1e-9) / 1e9 << " GB/s)\n";
}

std::string one_line_error(const std::exception& e, const StageContext& context,
                           const std::string& doing) {
  std::string text = e.what();
  if (const auto* torch_error = dynamic_cast<const c10::Error*>(&e)) {
    if (std::getenv("LLAVA_PIPE_VERBOSE")) {
      std::cerr << "llava-stage: " << context.who << ": " << text << "\n";
    }
    text = torch_error->what_without_backtrace();
  }
  if (text.find("out of memory") == std::string::npos) {
    const auto newline = text.find('\n');
    return newline == std::string::npos ? text : text.substr(0, newline);
  }
  std::string allocation;
  const auto tried = text.find(kTriedToAllocate);
  if (tried != std::string::npos) {
    allocation = text.substr(
        tried, text.find('.', tried + kTriedToAllocate.size() + kPastTheDecimalPoint) - tried);
  }
  const uint64_t memory_limit = context.section.memory_limit;
  const std::string limit = memory_limit > 0 ? format_bytes(memory_limit) : std::string("none");
  return context.who + ": out of memory " + doing +
         (allocation.empty() ? "" : " (" + allocation + ")") + "; memory_limit " + limit + ": " +
         memory_knobs(context.kind);
}

bool is_sticky(const std::exception& e) {
  const std::string what = e.what();
  for (const char* sign :
       {"illegal memory access", "device-side assert", "unspecified launch failure",
        "misaligned address", "illegal instruction"}) {
    if (what.find(sign) != std::string::npos) return true;
  }
  return false;
}

void exit_after_sticky_error(const std::exception& e) {
  std::cerr << "llava-stage: unrecoverable device error, exiting so that a fresh process takes "
               "over: "
            << e.what() << std::endl;
  std::_Exit(kExitRuntime);  // no destructors: they would touch the broken context
}

}  // namespace llava
