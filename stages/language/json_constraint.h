// Structured output (the API's response_format json_object, JSON mode, and json_schema): the
// answer's text is one JSON object, of the request's schema if it has one. The byte-level
// recognizer of common/json_schema.h (compact JSON: no whitespace between tokens, one byte
// of it before the object, as a first token's leading space) says which tokens of the
// vocabulary may come next: those whose bytes it accepts from where the text is; the
// end-of-sequence tokens only once the object is closed, and then nothing else. Whitespace
// is left out so that a model cannot stall in it (an endless run of newlines satisfies a
// grammar that allows them).
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "common/json_schema.h"
#include "common/token_table.h"
#include "stages/language/taken_ids.h"

namespace llava {

// One answer's constraint: its state after the answer's tokens so far, and the mask of the
// next token.
class JsonConstraint {
 public:
  // `table`: every token's bytes (a special token's none: never allowed); `stop`: the
  // end-of-sequence ids, allowed once the object is complete; `schema`: the answer's (any
  // object: JSON mode).
  JsonConstraint(std::shared_ptr<const TokenTable> table, std::vector<int32_t> stop,
                 std::shared_ptr<const JsonSchema> schema = JsonSchema::any_object());
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
  std::shared_ptr<const JsonSchema> schema_;
  SchemaState state_;
  TakenIds taken_;  // the answer's tokens state_ has taken
  // Per token: its bytes are whole UTF-8 characters of a string (no '"', '\\', control
  // byte): in_string() takes it whole, untried. Most of a vocabulary, and a long answer's
  // text is mostly strings. Shared by the constraints of one table.
  std::shared_ptr<const std::vector<uint8_t>> string_bytes_;
  mutable std::vector<uint8_t> allowed_;  // mask()'s scratch, one per vocabulary id
  mutable std::vector<SchemaState> after_first_;  // mask()'s: the state past each first byte
  mutable std::vector<uint8_t> second_ok_;        // mask()'s: rows of second bytes that fit
};

}  // namespace llava
