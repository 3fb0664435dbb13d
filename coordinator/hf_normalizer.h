// tokenizer.json's "normalizer" (tokenizers/src/normalizers/): the steps LLaMA-family files
// use, Prepend and Replace, in a Sequence; the Unicode normalizations are refused at load.
#pragma once

#include <string>
#include <vector>

#include "coordinator/hf_json_reader.h"

namespace llava::hf {

struct NormalizerStep {
  enum Kind { kPrepend, kReplace } kind;
  std::string a, b;  // Prepend: a = the prefix; Replace: a -> b
};

// Appends `node`'s steps (none for null); throws CheckpointError naming `path`.
void read_normalizer(const JsonReader& r, const Json& node, const std::string& path,
                     std::vector<NormalizerStep>& steps);
std::string normalize(const std::vector<NormalizerStep>& steps, std::string text);

}  // namespace llava::hf
