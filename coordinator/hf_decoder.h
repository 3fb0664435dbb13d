// tokenizer.json's "decoder" (tokenizers/src/decoders/): token strings back to text through
// Replace, ByteFallback (<0xXX> tokens to bytes), Fuse, Strip and Metaspace, in a Sequence.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "coordinator/hf_json_reader.h"

namespace llava::hf {

struct DecoderStep {
  enum Kind { kReplace, kByteFallback, kFuse, kStrip, kMetaspace } kind;
  std::string a, b;  // Replace: a -> b; Strip: a = the character; Metaspace: a = replacement
  size_t start = 0, stop = 0;
  bool prepended = false;  // Metaspace: a scheme other than "never"
};

// "<0xXX>": a token ByteFallback turns into the byte XX. Its byte, or -1 for any other.
int byte_token(const std::string& token);

// Appends `node`'s steps; throws CheckpointError naming `path`.
void read_decoder(const JsonReader& r, const Json& node, const std::string& path,
                  std::vector<DecoderStep>& steps);
std::vector<std::string> run_decoder(const std::vector<DecoderStep>& steps,
                                     std::vector<std::string> tokens);

}  // namespace llava::hf
