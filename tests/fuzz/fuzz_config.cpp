// libFuzzer target: the YAML pipeline config (parse_config, without touching files). Bad
// text must end in a ConfigError, never a crash or another exception.
#include <cstdint>
#include <string>

#include "common/config.h"
#include "common/errors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    llava::PipelineConfig config = llava::parse_config(text, "fuzz.yaml", false);
    // What was accepted keeps the documented ranges.
    if (config.vision.batch_size < 1 || config.language.batch_size < 1) __builtin_trap();
    if (config.generation.max_new_tokens < 1) __builtin_trap();
  } catch (const llava::ConfigError&) {
  }
  return 0;
}
