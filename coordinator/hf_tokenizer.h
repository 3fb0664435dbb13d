// A Hugging Face `tokenizer.json` (the `tokenizers` library's format) read and run as the file
// declares, step for step as the Rust library does: added tokens split out first, normalizer,
// pre-tokenizer, BPE model, post-processor; decoders for the way back. The components LLaMA,
// Vicuna and Mistral files use are supported; any other is an error at load naming its JSON path.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace llava {

class HfTokenizer {
 public:
  // `origin` names the source in error messages (the file's path).
  static HfTokenizer from_file(const std::string& path);
  static HfTokenizer from_json_text(const std::string& json, const std::string& origin);
  HfTokenizer(HfTokenizer&&) noexcept;
  HfTokenizer& operator=(HfTokenizer&&) noexcept;
  ~HfTokenizer();

  // add_special_tokens: apply the post-processor's template (for LLaMA: the BOS in front).
  std::vector<int32_t> encode(const std::string& text, bool add_special_tokens) const;
  // skip_special_tokens drops the added tokens marked special; unknown ids are dropped too.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const;

  // An added token for the caller (the coordinator's `<image>`), unless the file has one with
  // that content already: special, matched on the raw text, never normalized.
  void add_special_token(const std::string& content, int32_t id);

  int32_t token_to_id(const std::string& token) const;  // added tokens, then the model; -1
  bool is_special(int32_t id) const;                    // an added token marked special
  // A piece of the model's vocabulary or a non-special added token, not a byte-fallback
  // byte (<0x0A>).
  bool is_plain(int32_t id) const;
  // The token's string: an added token's content or the model's piece ("▁Hello", "<0x0A>");
  // "" for an unknown id.
  std::string piece(int32_t id) const;
  int32_t vocab_size() const;                           // model and added, ids below this
  // The first special token of the post-processor's single template, -1 without one.
  int32_t template_first_special() const;

 private:
  struct Impl;
  explicit HfTokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace llava
