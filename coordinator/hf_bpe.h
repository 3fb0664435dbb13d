// tokenizer.json's "model": BPE (tokenizers/src/models/bpe/), its vocabulary and merges,
// with unk_token, fuse_unk, byte_fallback (<0xXX> tokens) and ignore_merges.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "coordinator/hf_json_reader.h"

namespace llava::hf {

struct Bpe {
  std::unordered_map<std::string, int32_t> vocab;
  std::unordered_map<int32_t, std::string> vocab_r;
  struct Merge {
    uint32_t rank;
    int32_t id;
  };
  std::unordered_map<uint64_t, Merge> merges;  // (left id << 32 | right id) -> rank, merged id
  std::string unk_token;                       // empty: none
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  std::string continuing_subword_prefix, end_of_word_suffix;
  int32_t byte_ids[256];

  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  // models/bpe/model.rs merge_word + word.rs merge_all: `word`'s ids appended to `out`.
  void tokenize(const std::string& word, std::vector<int32_t>& out) const;
};

// The "model" object; throws CheckpointError naming the JSON path.
void read_bpe(const JsonReader& r, const Json& node, Bpe& bpe);

}  // namespace llava::hf
