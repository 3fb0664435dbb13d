// The Jinja lexer's two levels: a template's source split into text and tags ({{ }}, {% %};
// comments dropped) with transformers' trim_blocks / lstrip_blocks and "-" / "+" whitespace
// control; then a tag's inside split into tokens for the parser.
#pragma once

#include <string>
#include <vector>

namespace llava::jinja {

struct Segment {
  enum Kind { kText, kOutput, kStatement } kind;
  std::string text;
  int line;
};

// Throws JinjaError for a tag that is not closed.
std::vector<Segment> split(const std::string& src);

enum class Tok { kName, kString, kInt, kFloat, kOp, kEnd };
struct Token {
  Tok kind;
  std::string text;
  int line;
};

// A tag's inside, which starts at `line`; ends with a kEnd token. Throws JinjaError.
std::vector<Token> tokenize(const std::string& s, int line);

}  // namespace llava::jinja
