// Text <-> token ids for LLaMA-family checkpoints, as transformers' AutoProcessor tokenizes
// them. Which file wins: tokenizer.json when the checkpoint has it (transformers loads the
// fast tokenizer from it, and it declares its own rules: HfTokenizer follows them), else
// tokenizer.model through SentencePiece with LlamaTokenizer's legacy=False rules: added
// tokens ("<image>", "<s>", ...) are matched in the text first; SentencePiece encodes the
// pieces between them, and only the piece at the very start gets the "▁" prefix, unless it
// already starts with a space. Lives in the coordinator: never link it with LibTorch
// (protobuf clash on Debian).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/token_table.h"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace llava {

class HfTokenizer;

class Tokenizer {
 public:
  // Reads `folder`/tokenizer.json, else `folder`/tokenizer.model with the added tokens of
  // added_tokens.json when present (and <unk>, <s>, </s>). `extra_tokens` (the coordinator's
  // <image>) are added as special tokens unless the files already have that content.
  explicit Tokenizer(const std::string& folder,
                     const std::map<std::string, int32_t>& extra_tokens = {});
  ~Tokenizer();

  // add_bos: tokenizer.json's post-processor template (BOS for LLaMA), as
  // add_special_tokens=True does in transformers.
  std::vector<int32_t> encode(const std::string& text, bool add_bos = true) const;
  // Skips special tokens (skip_special_tokens=True): tokenizer.json's special added tokens;
  // SentencePiece's added, control and unknown ones.
  std::string decode(const std::vector<int32_t>& ids) const;

  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t token_id(const std::string& added_token) const;  // -1 if unknown
  bool is_special(int32_t id) const;
  // An ordinary piece: in the vocabulary, not special, not a byte-fallback byte (<0x0A>).
  // Decoding that starts at one renders the tokens after it as the whole text does.
  bool is_plain(int32_t id) const;
  // The bytes one token adds to a text, as the API's logprobs show a token: what follows a
  // plain token's text when it comes after it (" Hello", with its space), a byte-fallback
  // token's byte (possibly part of a character), a special token's name ("</s>", which
  // decode() drops); "" for an id outside the vocabulary.
  std::string token_text(int32_t id) const;
  int32_t vocab_size() const { return pieces_; }
  // A plain token (it decodes alone to a character or more), -1 if none was found.
  int32_t anchor() const { return anchor_; }

 private:
  void encode_piece(const std::string& text, bool at_start, std::vector<int32_t>& out) const;

  std::unique_ptr<HfTokenizer> json_;  // set when the checkpoint has tokenizer.json
  std::unique_ptr<sentencepiece::SentencePieceProcessor> encoder_;  // no dummy prefix
  std::unique_ptr<sentencepiece::SentencePieceProcessor> decoder_;  // as trained
  std::map<std::string, int32_t> added_;  // content -> id
  void find_anchor();

  int32_t bos_id_ = 1, eos_id_ = 2;
  int32_t pieces_ = 0;
  // A plain token token_text() decodes others after (its start-of-text rules act on it).
  int32_t anchor_ = -1;
  std::string anchor_text_;
};

// Every token's bytes as token_text() gives them, none for a special token: what a
// language worker constrains a JSON-mode answer with (common/token_table.h).
TokenTable token_table(const Tokenizer& tokenizer);

// Streams text as tokens arrive, never splitting a UTF-8 character: bytes of a character
// that byte-fallback tokens have only partly produced are held back. Each token costs a
// decode of a short window, not of the whole answer: the window starts at a plain token
// the text has passed (the decoders' start-of-text rules, stripping a leading space, act
// on that token alone, and no byte run crosses it), so what it adds is what the whole
// decode adds.
class Detokenizer {
 public:
  // `continues_text`: the answer's text goes on from other text (an echoed prompt's), so
  // its first token keeps what a text's start drops (LLaMA's leading space).
  explicit Detokenizer(const Tokenizer& tokenizer, bool continues_text = false);
  std::string push(int32_t token);  // the new text (possibly empty)
  std::string finish();             // whatever was held back

  // The window moves on once it holds this many tokens.
  static constexpr size_t kWindow = 16;

 private:
  const Tokenizer& tokenizer_;
  std::vector<int32_t> window_;  // the tokens since the window's start
  size_t emitted_ = 0;           // bytes of decode(window_) already returned
};

}  // namespace llava
