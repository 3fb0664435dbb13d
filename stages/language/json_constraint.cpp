// The compact-JSON recognizer and the per-token mask (json_constraint.h).
#include "stages/language/json_constraint.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

namespace llava {
namespace {

bool digit(unsigned char c) {
  return c >= '0' && c <= '9';
}
bool hex(unsigned char c) {
  return digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
bool space(unsigned char c) {
  return c == ' ' || c == '\n' || c == '\t' || c == '\r';
}

}  // namespace

bool JsonState::feed(std::string_view bytes) {
  for (char c : bytes) {
    if (!feed(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

bool JsonState::value(unsigned char c) {
  switch (c) {
    case '{':
    case '[':
      if (depth_ == kMaxDepth) return false;
      stack_[depth_++] = static_cast<char>(c);
      mode_ = c == '{' ? Mode::kKeyOrEnd : Mode::kValueOrEnd;
      return true;
    case '"':
      mode_ = Mode::kString;
      key_ = false;
      return true;
    case '-':
      mode_ = Mode::kNumber;
      number_ = Number::kMinus;
      return true;
    case 't':
    case 'f':
    case 'n':
      mode_ = Mode::kLiteral;
      literal_ = c == 't' ? "true" : c == 'f' ? "false" : "null";
      literal_at_ = 1;
      return true;
    default:
      if (!digit(c)) return false;
      mode_ = Mode::kNumber;
      number_ = c == '0' ? Number::kZero : Number::kInt;
      return true;
  }
}

bool JsonState::ended_value() {
  mode_ = depth_ == 0 ? Mode::kDone : Mode::kCommaOrEnd;
  return true;
}

// A number ends at the first byte that cannot continue it, which is then the container's.
bool JsonState::after_number(unsigned char c) {
  switch (number_) {
    case Number::kMinus:
      if (!digit(c)) return false;
      number_ = c == '0' ? Number::kZero : Number::kInt;
      return true;
    case Number::kZero:
    case Number::kInt:
      if (digit(c) && number_ == Number::kInt) return true;
      if (c == '.') return number_ = Number::kDot, true;
      if (c == 'e' || c == 'E') return number_ = Number::kE, true;
      break;
    case Number::kDot:
      if (!digit(c)) return false;
      number_ = Number::kFraction;
      return true;
    case Number::kFraction:
      if (digit(c)) return true;
      if (c == 'e' || c == 'E') return number_ = Number::kE, true;
      break;
    case Number::kE:
      if (c == '+' || c == '-') return number_ = Number::kExponentSign, true;
      if (!digit(c)) return false;
      number_ = Number::kExponent;
      return true;
    case Number::kExponentSign:
      if (!digit(c)) return false;
      number_ = Number::kExponent;
      return true;
    case Number::kExponent:
      if (digit(c)) return true;
      break;
  }
  ended_value();  // a whole number: c is the next token's
  return feed(c);
}

bool JsonState::feed(unsigned char c) {
  switch (mode_) {
    case Mode::kLeading:
      if (space(c) && leading_ < 1) return ++leading_, true;
      if (c != '{') return false;
      stack_[depth_++] = '{';
      mode_ = Mode::kKeyOrEnd;
      return true;
    case Mode::kValueOrEnd:
      if (c == ']') {
        --depth_;
        return ended_value();
      }
      return value(c);
    case Mode::kValue:
      return value(c);
    case Mode::kKeyOrEnd:
      if (c == '}') {
        --depth_;
        return ended_value();
      }
      [[fallthrough]];
    case Mode::kKey:
      if (c != '"') return false;
      mode_ = Mode::kString;
      key_ = true;
      return true;
    case Mode::kColon:
      if (c != ':') return false;
      mode_ = Mode::kValue;
      return true;
    case Mode::kCommaOrEnd: {
      const char open = stack_[depth_ - 1];
      if (c == ',') {
        mode_ = open == '{' ? Mode::kKey : Mode::kValue;
        return true;
      }
      if ((c == '}' && open == '{') || (c == ']' && open == '[')) {
        --depth_;
        return ended_value();
      }
      return false;
    }
    case Mode::kString:
      if (c == '"') {
        if (!key_) return ended_value();
        mode_ = Mode::kColon;
        return true;
      }
      if (c == '\\') return mode_ = Mode::kEscape, true;
      return c >= 0x20;
    case Mode::kEscape:
      if (c == 'u') {
        mode_ = Mode::kHex;
        hex_left_ = 4;
        return true;
      }
      if (!std::strchr("\"\\/bfnrt", c) || c == 0) return false;
      mode_ = Mode::kString;
      return true;
    case Mode::kHex:
      if (!hex(c)) return false;
      if (--hex_left_ == 0) mode_ = Mode::kString;
      return true;
    case Mode::kNumber:
      return after_number(c);
    case Mode::kLiteral:
      if (c != static_cast<unsigned char>(literal_[literal_at_])) return false;
      if (literal_[++literal_at_] == '\0') return ended_value();
      return true;
    case Mode::kDone:
      return false;
  }
  return false;
}

JsonConstraint::JsonConstraint(std::shared_ptr<const TokenTable> table, std::vector<int32_t> stop)
    : table_(std::move(table)), stop_(std::move(stop)), string_bytes_(table_->size(), 0) {
  for (size_t id = 0; id < table_->size(); ++id) {
    const std::string_view bytes = (*table_)[id];
    string_bytes_[id] = !bytes.empty() && std::all_of(bytes.begin(), bytes.end(), [](char c) {
      const auto b = static_cast<unsigned char>(c);
      return b >= 0x20 && b != '"' && b != '\\';
    });
  }
}

void JsonConstraint::take(const std::vector<int32_t>& history, size_t from) {
  size_t begin = 0;
  if (!taken_.take(history, from, begin)) state_ = JsonState();
  for (size_t i = begin; i < history.size(); ++i) {
    const int32_t id = history[i];
    // A token the mask let through always feeds; a stop token (or a peer's odd history)
    // leaves the state as it is.
    if (id >= 0 && static_cast<size_t>(id) < table_->size()) {
      JsonState next = state_;
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
  for (size_t id = 0; !done && id < std::min(vocab, table_->size()); ++id) {
    if (in_string && string_bytes_[id]) {
      allowed_[id] = 1, ++count;
      continue;
    }
    const std::string_view bytes = (*table_)[id];
    JsonState next = state_;
    if (!bytes.empty() && next.feed(bytes)) allowed_[id] = 1, ++count;
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
