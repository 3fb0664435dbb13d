// Splitting a template into text and tags, and a tag into tokens (see jinja_lexer.h).
#include "coordinator/jinja_lexer.h"

#include <algorithm>
#include <cctype>
#include <cstring>

#include "coordinator/jinja.h"
#include "coordinator/jinja_value.h"

namespace llava::jinja {

std::vector<Segment> split(const std::string& src) {
  std::vector<Segment> out;
  size_t i = 0;
  int line = 1;
  bool strip_next = false, trim_newline = false;
  auto count_lines = [](const std::string& s) {
    return static_cast<int>(std::count(s.begin(), s.end(), '\n'));
  };
  while (i <= src.size()) {
    size_t open = src.find('{', i);
    while (open != std::string::npos && open + 1 < src.size() && src[open + 1] != '{' &&
           src[open + 1] != '%' && src[open + 1] != '#') {
      open = src.find('{', open + 1);
    }
    if (open + 1 >= src.size()) open = std::string::npos;
    std::string text = src.substr(i, open == std::string::npos ? std::string::npos : open - i);
    const int text_line = line;
    line += count_lines(text);
    if (trim_newline && !text.empty() && text[0] == '\n') text.erase(0, 1);
    if (trim_newline && text.rfind("\r\n", 0) == 0) text.erase(0, 2);
    if (strip_next) text = trimmed(text, true, false);
    strip_next = trim_newline = false;
    if (open == std::string::npos) {
      if (!text.empty()) out.push_back({Segment::kText, text, text_line});
      break;
    }
    const char kind = src[open + 1];
    const std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    size_t inner = open + 2;
    const bool strip_before = inner < src.size() && src[inner] == '-';
    const bool keep_before = inner < src.size() && src[inner] == '+';
    if (strip_before || keep_before) ++inner;
    const size_t end = src.find(close, inner);
    if (end == std::string::npos) {
      throw JinjaError("line " + std::to_string(line) + ": a '{" + std::string(1, kind) +
                       "' tag is not closed");
    }
    size_t inner_end = end;
    const bool strip_after = inner_end > inner && src[inner_end - 1] == '-';
    if (strip_after) --inner_end;
    if (strip_before) {
      text = trimmed(text, false, true);
    } else if (kind != '{' && !keep_before) {  // lstrip_blocks: spaces alone before a tag
      size_t k = open;
      while (k > i && (src[k - 1] == ' ' || src[k - 1] == '\t')) --k;
      if (k == 0 || src[k - 1] == '\n') text.erase(text.size() - std::min(text.size(), open - k));
    }
    if (!text.empty()) out.push_back({Segment::kText, text, text_line});
    const std::string body = src.substr(inner, inner_end - inner);
    if (kind == '{') out.push_back({Segment::kOutput, body, line});
    if (kind == '%') out.push_back({Segment::kStatement, body, line});
    line += count_lines(src.substr(open, end + 2 - open));
    strip_next = strip_after;
    trim_newline = kind != '{' && !strip_after;  // trim_blocks
    i = end + 2;
  }
  return out;
}

std::vector<Token> tokenize(const std::string& s, int line) {
  std::vector<Token> out;
  size_t i = 0;
  auto fail = [&](const std::string& what) -> void {
    throw JinjaError("line " + std::to_string(line) + ": " + what);
  };
  while (i < s.size()) {
    const char c = s[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      if (c == '\n') ++line;
      ++i;
    } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      out.push_back({Tok::kName, s.substr(i, j - i), line});
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
      bool real =
          j + 1 < s.size() && s[j] == '.' && std::isdigit(static_cast<unsigned char>(s[j + 1]));
      if (real) {
        ++j;
        while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
      }
      out.push_back({real ? Tok::kFloat : Tok::kInt, s.substr(i, j - i), line});
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string text;
      size_t j = i + 1;
      for (; j < s.size() && s[j] != c; ++j) {
        if (s[j] == '\\' && j + 1 < s.size()) {
          const char e = s[++j];
          text += e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
        } else {
          if (s[j] == '\n') ++line;
          text += s[j];
        }
      }
      if (j >= s.size()) fail("a string is not closed");
      out.push_back({Tok::kString, text, line});
      i = j + 1;
    } else {
      static const char* kOps[] = {"==", "!=", "<=", ">=", "//", "**", "(", ")", "[",
                                   "]",  "{",  "}",  ".",  ",",  ":",  "|", "+", "-",
                                   "*",  "/",  "%",  "~",  "<",  ">",  "="};
      bool found = false;
      for (const char* op : kOps) {
        if (s.compare(i, std::strlen(op), op) == 0) {
          out.push_back({Tok::kOp, op, line});
          i += std::strlen(op);
          found = true;
          break;
        }
      }
      if (!found) fail(std::string("unexpected character '") + c + "'");
    }
  }
  out.push_back({Tok::kEnd, "", line});
  return out;
}

}  // namespace llava::jinja
