// Helpers shared by the multi-process tests and the soak: running a command, and the
// reference answer of in-process generation (tests/pipeline/generate_local) for a prompt.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "coordinator/chat_template.h"
#include "coordinator/coordinator.h"

namespace llava::test {

// Where the multi-process tests find the build and the test data.
inline const std::string kSource = LLAVA_PIPE_SOURCE_DIR;
inline const std::string kBinary = LLAVA_PIPE_BINARY_DIR;
inline const std::string kModel = kSource + "/tests/data/tiny-llava";
inline const std::string kImages = kSource + "/tests/data/images/";

// A variable the workers started in this scope inherit (a fault hook), unset at its end
// however the test leaves it.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) { setenv(name, value.c_str(), 1); }
  ~ScopedEnv() { unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
};

inline std::string run_command(const std::string& command) {
  std::string output;
  FILE* pipe = popen(command.c_str(), "r");
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) output.append(buffer, n);
  pclose(pipe);
  return output;
}

// Greedy tokens of the worker's own code run in one process, for the prompt the
// coordinator would build (template, image tokens expanded).
inline std::vector<int32_t> generate_in_process(const Coordinator& coordinator,
                                                const std::string& chat_template,
                                                const std::string& prompt,
                                                const std::vector<std::string>& images,
                                                const std::string& model_folder, int max_new_tokens) {
  const auto& model = coordinator.model();
  auto ids = expand_image_tokens(
      coordinator.tokenizer().encode(apply_chat_template(chat_template, prompt, static_cast<int>(images.size()))),
      static_cast<int32_t>(model.image_token_index), model.image_tokens());
  std::string csv;
  for (size_t i = 0; i < ids.size(); ++i) csv += (i ? "," : "") + std::to_string(ids[i]);
  std::string command = kBinary + "/tests/pipeline/generate_local " +
                        model_folder + " " + std::to_string(max_new_tokens) + " " + csv;
  for (const auto& image : images) command += " '" + image + "'";
  std::vector<int32_t> tokens;
  std::stringstream out(run_command(command));
  for (std::string t; std::getline(out, t, ',');) tokens.push_back(std::stoi(t));
  return tokens;
}

}  // namespace llava::test
