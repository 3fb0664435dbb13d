// The per-token mask of structured output (json_constraint.h).
#include "stages/language/json_constraint.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <mutex>
#include <utility>

#include "common/utf8.h"

namespace llava {
namespace {

// Per token of `table`: its bytes are whole UTF-8 characters of a string (no '"', '\\',
// control byte). Made once per table (about 0.7 ms for 32,000 tokens on the development
// machine), not once per request: a worker keeps the one table its coordinator sends.
std::shared_ptr<const std::vector<uint8_t>> string_tokens(
    const std::shared_ptr<const TokenTable>& table) {
  static std::mutex mutex;
  static std::weak_ptr<const TokenTable> last;
  static std::shared_ptr<const std::vector<uint8_t>> flags;
  std::lock_guard<std::mutex> lock(mutex);
  if (flags && last.lock() == table) return flags;
  auto made = std::make_shared<std::vector<uint8_t>>(table->size(), 0);
  for (size_t id = 0; id < table->size(); ++id) {
    const std::string_view bytes = (*table)[id];
    (*made)[id] = !bytes.empty() && utf8_error_offset(std::string(bytes)) == std::string::npos &&
                  std::all_of(bytes.begin(), bytes.end(), [](char c) {
                    const auto b = static_cast<unsigned char>(c);
                    return b >= 0x20 && b != '"' && b != '\\';
                  });
  }
  last = table;
  flags = std::move(made);
  return flags;
}

}  // namespace

JsonConstraint::JsonConstraint(std::shared_ptr<const TokenTable> table, std::vector<int32_t> stop,
                               std::shared_ptr<const JsonSchema> schema)
    : table_(std::move(table)),
      stop_(std::move(stop)),
      schema_(std::move(schema)),
      state_(schema_.get()),
      string_bytes_(string_tokens(table_)) {}

void JsonConstraint::take(const std::vector<int32_t>& history, size_t from) {
  size_t begin = 0;
  if (!taken_.take(history, from, begin)) state_ = SchemaState(schema_.get());
  for (size_t i = begin; i < history.size(); ++i) {
    const int32_t id = history[i];
    // A token the mask let through always feeds; a stop token (or a peer's odd history)
    // leaves the state as it is.
    if (id >= 0 && static_cast<size_t>(id) < table_->size()) {
      SchemaState next = state_;
      if (next.feed((*table_)[static_cast<size_t>(id)])) state_ = next;
    }
  }
}

void JsonConstraint::mask(float* scores, size_t vocab) const {
  constexpr float kNone = -std::numeric_limits<float>::infinity();
  const bool done = state_.complete();
  allowed_.assign(vocab, 0);
  size_t count = 0;
  const bool in_string = state_.in_string();
  // Each of the 256 first bytes tried once: most tokens go no further than theirs. Where
  // many tokens share a first byte that fits (a schema's listed string), the second bytes
  // after it are tried once too (a row of 256), and most go no further than theirs.
  constexpr int kRowAfter = 64;  // tokens tried with one first byte before its row is made
  uint8_t first_ok[256] = {};
  int tried[256] = {};
  int16_t row[256];
  std::fill(std::begin(row), std::end(row), int16_t{-1});
  size_t rows = 0;
  if (!done) {
    after_first_.assign(256, state_);
    for (int c = 0; c < 256; ++c)
      first_ok[c] = after_first_[static_cast<size_t>(c)].feed(static_cast<unsigned char>(c));
  }
  auto second_fits = [&](unsigned char first, unsigned char second) {
    if (row[first] < 0) {
      if (++tried[first] < kRowAfter) return true;  // not worth a row yet: the whole token is tried
      row[first] = static_cast<int16_t>(rows++);
      second_ok_.resize(rows * 256);
      uint8_t* out = &second_ok_[static_cast<size_t>(row[first]) * 256];
      for (int c = 0; c < 256; ++c) {
        SchemaState next = after_first_[first];
        out[c] = next.feed(static_cast<unsigned char>(c));
      }
    }
    return second_ok_[static_cast<size_t>(row[first]) * 256 + second] != 0;
  };
  for (size_t id = 0; !done && id < std::min(vocab, table_->size()); ++id) {
    if (in_string && (*string_bytes_)[id]) {
      allowed_[id] = 1, ++count;
      continue;
    }
    const std::string_view bytes = (*table_)[id];
    if (bytes.empty()) continue;
    const auto first = static_cast<unsigned char>(bytes[0]);
    if (!first_ok[first]) continue;
    if (bytes.size() > 1) {
      if (!second_fits(first, static_cast<unsigned char>(bytes[1]))) continue;
      SchemaState next = after_first_[first];
      if (!next.feed(bytes.substr(1))) continue;
    }
    allowed_[id] = 1, ++count;
  }
  // The stop tokens: once complete, or where nothing else can come (the answer ends there,
  // not as JSON, rather than drawing from no token at all).
  bool stops = false;
  if (done || count == 0) {
    for (int32_t id : stop_) {
      if (id >= 0 && static_cast<size_t>(id) < vocab)
        allowed_[static_cast<size_t>(id)] = 1, stops = true;
    }
  }
  if (count == 0 && !stops) return;  // nothing at all: left as it is
  for (size_t id = 0; id < vocab; ++id) {
    if (!allowed_[id]) scores[id] = kNone;
  }
}

}  // namespace llava
