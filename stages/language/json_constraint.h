// JSON mode (the API's response_format {"type": "json_object"}): the answer's text is one
// JSON object. A byte-level recognizer of compact JSON (RFC 8259, no whitespace between
// tokens; one byte of it before the object, as a first token's leading space) says
// which tokens of the vocabulary may come next: those whose bytes it accepts from where the
// text is; the end-of-sequence tokens only once the object is closed, and then nothing
// else. Whitespace is left out so that a model cannot stall in it (an endless run of
// newlines satisfies a grammar that allows them); strings take any bytes but '"', '\' and
// control bytes, plus the escapes.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "common/token_table.h"
#include "stages/language/taken_ids.h"

namespace llava {

// Where a JSON text stands after some bytes: small and copied by value, so that each
// candidate token is tried on a copy.
class JsonState {
 public:
  static constexpr int kMaxDepth = 32;  // objects and arrays open at once
  // Takes the bytes in; false (and the state is then undefined) where they cannot continue
  // a JSON object.
  bool feed(std::string_view bytes);
  bool feed(unsigned char c);
  bool complete() const { return mode_ == Mode::kDone; }
  // Inside a string (not in an escape): any byte but '"', '\' and control bytes continues it.
  bool in_string() const { return mode_ == Mode::kString; }

 private:
  enum class Mode : uint8_t {
    kLeading,     // before the object: whitespace, then '{'
    kValue,       // a value
    kValueOrEnd,  // after '[': a value or ']'
    kKeyOrEnd,    // after '{': a key or '}'
    kKey,         // after ',' in an object
    kColon,
    kCommaOrEnd,  // after a value inside an object or array
    kString,
    kEscape,
    kHex,      // \uXXXX: hex_left_ digits to come
    kNumber,   // number_ says where in it
    kLiteral,  // true, false, null: literal_[literal_at_] next
    kDone,
  };
  // Within a number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
  enum class Number : uint8_t {
    kMinus,
    kZero,
    kInt,
    kDot,
    kFraction,
    kE,
    kExponentSign,
    kExponent
  };
  bool value(unsigned char c);  // c starts a value
  bool ended_value();           // a value has ended: the container's next, or done
  bool after_number(unsigned char c);

  Mode mode_ = Mode::kLeading;
  Number number_ = Number::kInt;
  bool key_ = false;  // the string is an object's key
  uint8_t leading_ = 0, hex_left_ = 0, depth_ = 0, literal_at_ = 0;
  const char* literal_ = nullptr;
  char stack_[kMaxDepth] = {};  // '{' or '[' per open container
};

// One answer's constraint: its state after the answer's tokens so far, and the mask of the
// next token.
class JsonConstraint {
 public:
  // `table`: every token's bytes (a special token's none: never allowed); `stop`: the
  // end-of-sequence ids, allowed once the object is complete.
  JsonConstraint(std::shared_ptr<const TokenTable> table, std::vector<int32_t> stop);
  // Takes in the answer's tokens not seen yet: `history` from `from` on grows between calls
  // (a history that is not a continuation is taken afresh from `from`).
  void take(const std::vector<int32_t>& history, size_t from);
  // Sets every score of a token that cannot come next to -inf. Where none can (a
  // vocabulary without the bytes the text needs), the stop tokens stay: the answer ends
  // there (and with no stop token, nothing is masked).
  void mask(float* scores, size_t vocab) const;
  bool complete() const { return state_.complete(); }

 private:
  std::shared_ptr<const TokenTable> table_;
  std::vector<int32_t> stop_;
  JsonState state_;
  TakenIds taken_;  // the answer's tokens state_ has taken
  // Per token: its bytes are all string bytes (in_string() takes it whole, untried): most
  // of a vocabulary, and a long answer's text is mostly strings.
  std::vector<uint8_t> string_bytes_;
  mutable std::vector<uint8_t> allowed_;  // mask()'s scratch, one per vocabulary id
};

}  // namespace llava
