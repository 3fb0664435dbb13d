// tokenizer.json's "pre_tokenizer" (pre_tokenizers/metaspace.rs): Metaspace, alone or in a
// Sequence, which turns spaces into "▁" and splits the text into words; and Piece, a
// stretch of the text on its way to the model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "coordinator/hf_json_reader.h"

namespace llava::hf {

// A stretch of the text on its way to the model: either an added token already, or text
// still to normalize, pre-tokenize and encode.
struct Piece {
  std::string text;
  bool at_origin = false;  // starts at byte 0 of the input (Metaspace prepend_scheme "first")
  int32_t token = -1;      // an added token's id, or -1
};

struct Metaspace {
  enum Scheme { kAlways, kFirst, kNever };
  std::string replacement = "\xe2\x96\x81";  // "▁"
  Scheme scheme = kAlways;
  bool split = true;
};

// As pre_tokenizers/metaspace.rs deserializes (also the Metaspace decoder's settings).
Metaspace read_metaspace(const JsonReader& r, const Json& node, const std::string& path);
// Appends `node`'s steps (none for null); throws CheckpointError naming `path`.
void read_pre_tokenizer(const JsonReader& r, const Json& node, const std::string& path,
                        std::vector<Metaspace>& steps);
// One text piece as Metaspace makes it: the replacement for spaces (and in front), words.
std::vector<Piece> metaspace_words(const Metaspace& m, const Piece& piece);

}  // namespace llava::hf
