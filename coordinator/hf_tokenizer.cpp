// tokenizer.json, run as huggingface/tokenizers runs it (tokenizers/src/tokenizer/mod.rs,
// added_vocabulary.rs, models/bpe/, normalizers/, pre_tokenizers/metaspace.rs, decoders/).
// Encoding: added tokens out of the raw text -> normalizer on each remaining piece -> added
// tokens marked `normalized` -> pre-tokenizer -> BPE on each word -> template.
#include "coordinator/hf_tokenizer.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "common/errors.h"

namespace llava {
namespace {

using Json = nlohmann::json;

// ---------------------------------------------------------------- UTF-8 ---------------
size_t utf8_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 6) return 2;
  if ((lead >> 4) == 14) return 3;
  if ((lead >> 3) == 30) return 4;
  return 1;  // a stray continuation byte: one "character" of its own
}

// The code point at `pos` and its length in bytes (a bad sequence reads as one byte).
uint32_t code_point_at(const std::string& s, size_t pos, size_t* length) {
  const auto lead = static_cast<unsigned char>(s[pos]);
  size_t n = utf8_length(lead);
  if (pos + n > s.size()) n = 1;
  *length = n;
  if (n == 1) return lead;
  uint32_t cp = lead & (0x7f >> n);
  for (size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[pos + k]) & 0x3f);
  return cp;
}

// What Rust's String::from_utf8 accepts: no overlong forms, no surrogates, nothing past U+10FFFF.
bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = 0;
    unsigned char low = 0x80, high = 0xbf;
    if (c < 0x80) {
      n = 1;
    } else if (c >= 0xc2 && c <= 0xdf) {
      n = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
      n = 3;
      if (c == 0xe0) low = 0xa0;
      if (c == 0xed) high = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      n = 4;
      if (c == 0xf0) low = 0x90;
      if (c == 0xf4) high = 0x8f;
    } else {
      return false;
    }
    if (i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if (b < (k == 1 ? low : 0x80) || b > (k == 1 ? high : 0xbf)) return false;
    }
    i += n;
  }
  return true;
}

// Unicode White_Space, what Rust's regex `\s` matches.
bool is_whitespace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0d) || cp == 0x20 || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f ||
         cp == 0x205f || cp == 0x3000;
}

// Rust's regex `\w` (Unicode): exact for ASCII; beyond it, anything that is not white space
// or in the general punctuation and CJK punctuation blocks counts as a word character.
bool is_word_char(uint32_t cp) {
  if (cp < 0x80) return std::isalnum(static_cast<int>(cp)) || cp == '_';
  if (is_whitespace(cp)) return false;
  if (cp >= 0x2000 && cp <= 0x206f) return false;
  if (cp >= 0x3000 && cp <= 0x303f) return false;
  return true;
}

// The code point that ends s[0, end).
uint32_t code_point_before(const std::string& s, size_t end, size_t* start) {
  size_t begin = end - 1;
  while (begin > 0 && (static_cast<unsigned char>(s[begin]) >> 6) == 2 && end - begin < 4) --begin;
  size_t length = 0;
  const uint32_t cp = code_point_at(s, begin, &length);
  if (begin + length != end) {  // not a whole character: the last byte alone
    *start = end - 1;
    return static_cast<unsigned char>(s[end - 1]);
  }
  *start = begin;
  return cp;
}

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  std::string out;
  size_t at = 0;
  for (size_t hit; (hit = s.find(from, at)) != std::string::npos; at = hit + from.size()) {
    out.append(s, at, hit - at);
    out += to;
  }
  out.append(s, at, std::string::npos);
  s = std::move(out);
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// ---------------------------------------------------------------- reading the JSON ----
struct Reader {
  std::string origin;

  [[noreturn]] void fail(const std::string& path, const std::string& what) const {
    throw CheckpointError(origin + ": " + path + ": " + what);
  }
  [[noreturn]] void unsupported(const std::string& path, const Json& node) const {
    fail(path, "unsupported " + node.dump().substr(0, 120) +
                   " (supported: the BPE model; normalizers Sequence, Prepend, Replace; "
                   "pre-tokenizers Sequence, Metaspace; decoders Sequence, Replace, ByteFallback, "
                   "Fuse, Strip, Metaspace; post-processor TemplateProcessing)");
  }
  const Json& at(const Json& node, const std::string& path, const char* key) const {
    if (!node.is_object() || !node.contains(key))
      fail(path, std::string("missing \"") + key + "\"");
    return node.at(key);
  }
  std::string string(const Json& node, const std::string& path, const char* key) const {
    const Json& value = at(node, path, key);
    if (!value.is_string()) fail(path + "." + key, "expected a string, found " + value.dump());
    return value.get<std::string>();
  }
  bool boolean(const Json& node, const std::string& path, const char* key, bool fallback) const {
    if (!node.contains(key) || node.at(key).is_null()) return fallback;
    if (!node.at(key).is_boolean()) fail(path + "." + key, "expected true or false");
    return node.at(key).get<bool>();
  }
  std::string type(const Json& node, const std::string& path) const {
    return string(node, path, "type");
  }
  // A Replace pattern: {"String": "..."}; a Regex pattern is not supported.
  std::string pattern(const Json& node, const std::string& path) const {
    const Json& p = at(node, path, "pattern");
    if (p.is_object() && p.contains("String") && p.at("String").is_string()) {
      std::string s = p.at("String").get<std::string>();
      if (s.empty()) fail(path + ".pattern", "an empty pattern");
      return s;
    }
    fail(path + ".pattern", "only {\"String\": ...} patterns are supported, found " + p.dump());
  }
};

// ---------------------------------------------------------------- pieces of the text --
// A stretch of the text on its way to the model: either an added token already, or text
// still to normalize, pre-tokenize and encode.
struct Piece {
  std::string text;
  bool at_origin = false;  // starts at byte 0 of the input (Metaspace prepend_scheme "first")
  int32_t token = -1;      // an added token's id, or -1
};

// ---------------------------------------------------------------- normalizer ----------
struct NormalizerStep {
  enum Kind { kPrepend, kReplace } kind;
  std::string a, b;  // Prepend: a = the prefix; Replace: a -> b
};

void read_normalizer(const Reader& r, const Json& node, const std::string& path,
                     std::vector<NormalizerStep>& steps) {
  if (node.is_null()) return;
  const std::string type = r.type(node, path);
  if (type == "Sequence") {
    const Json& list = r.at(node, path, "normalizers");
    for (size_t i = 0; i < list.size(); ++i) {
      read_normalizer(r, list[i], path + ".normalizers[" + std::to_string(i) + "]", steps);
    }
  } else if (type == "Prepend") {
    steps.push_back({NormalizerStep::kPrepend, r.string(node, path, "prepend"), ""});
  } else if (type == "Replace") {
    steps.push_back(
        {NormalizerStep::kReplace, r.pattern(node, path), r.string(node, path, "content")});
  } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    r.fail(path, "the " + type +
                     " normalizer needs Unicode normalization tables, which the "
                     "coordinator does not carry; unsupported");
  } else {
    r.unsupported(path, node);
  }
}

std::string normalize(const std::vector<NormalizerStep>& steps, std::string text) {
  for (const auto& step : steps) {
    if (step.kind == NormalizerStep::kPrepend) {
      if (!text.empty()) text.insert(0, step.a);  // normalizers/prepend.rs: not on empty text
    } else {
      replace_all(text, step.a, step.b);
    }
  }
  return text;
}

// ---------------------------------------------------------------- pre-tokenizer -------
struct Metaspace {
  enum Scheme { kAlways, kFirst, kNever };
  std::string replacement = "\xe2\x96\x81";  // "▁"
  Scheme scheme = kAlways;
  bool split = true;
};

std::string read_char(const Reader& r, const Json& node, const std::string& path, const char* key) {
  std::string c = r.string(node, path, key);
  size_t length = 0;
  if (c.empty() || (code_point_at(c, 0, &length), length != c.size())) {
    r.fail(path + "." + key, "expected one character, found \"" + c + "\"");
  }
  return c;
}

// As pre_tokenizers/metaspace.rs deserializes: prepend_scheme defaults to "always";
// add_prefix_space: false means "never" and contradicts any other scheme.
Metaspace read_metaspace(const Reader& r, const Json& node, const std::string& path) {
  Metaspace m;
  m.replacement = read_char(r, node, path, "replacement");
  if (node.contains("prepend_scheme") && !node.at("prepend_scheme").is_null()) {
    const std::string scheme = r.string(node, path, "prepend_scheme");
    if (scheme == "always") {
      m.scheme = Metaspace::kAlways;
    } else if (scheme == "first") {
      m.scheme = Metaspace::kFirst;
    } else if (scheme == "never") {
      m.scheme = Metaspace::kNever;
    } else {
      r.fail(path + ".prepend_scheme", "expected always, first or never, found \"" + scheme + "\"");
    }
  }
  if (!r.boolean(node, path, "add_prefix_space", true)) {
    if (node.contains("prepend_scheme") && m.scheme != Metaspace::kNever) {
      r.fail(path, "add_prefix_space false does not match prepend_scheme");
    }
    m.scheme = Metaspace::kNever;
  }
  m.split = r.boolean(node, path, "split", true);
  return m;
}

void read_pre_tokenizer(const Reader& r, const Json& node, const std::string& path,
                        std::vector<Metaspace>& steps) {
  if (node.is_null()) return;
  const std::string type = r.type(node, path);
  if (type == "Sequence") {
    const Json& list = r.at(node, path, "pretokenizers");
    for (size_t i = 0; i < list.size(); ++i) {
      read_pre_tokenizer(r, list[i], path + ".pretokenizers[" + std::to_string(i) + "]", steps);
    }
  } else if (type == "Metaspace") {
    steps.push_back(read_metaspace(r, node, path));
  } else {
    r.unsupported(path, node);
  }
}

// Spaces become the replacement, which also goes in front as the scheme says ("first": only
// on the piece that starts the input, so not after an added token); with `split`, a new word
// starts at every replacement (MergedWithNext).
std::vector<Piece> metaspace_words(const Metaspace& m, const Piece& piece) {
  std::string text = piece.text;
  replace_all(text, " ", m.replacement);
  const bool prepend =
      !starts_with(text, m.replacement) &&
      (m.scheme == Metaspace::kAlways || (m.scheme == Metaspace::kFirst && piece.at_origin));
  if (prepend) text = m.replacement + text;
  if (!m.split) return {{text, piece.at_origin, -1}};
  std::vector<Piece> words;
  size_t begin = 0;
  for (size_t hit = text.find(m.replacement, 1); hit != std::string::npos;
       hit = text.find(m.replacement, hit + m.replacement.size())) {
    if (hit > begin)
      words.push_back({text.substr(begin, hit - begin), begin == 0 && piece.at_origin});
    begin = hit;
  }
  if (begin < text.size()) words.push_back({text.substr(begin), begin == 0 && piece.at_origin});
  return words;
}

// ---------------------------------------------------------------- decoder -------------
struct DecoderStep {
  enum Kind { kReplace, kByteFallback, kFuse, kStrip, kMetaspace } kind;
  std::string a, b;  // Replace: a -> b; Strip: a = the character; Metaspace: a = replacement
  size_t start = 0, stop = 0;
  bool prepended = false;  // Metaspace: a scheme other than "never"
};

void read_decoder(const Reader& r, const Json& node, const std::string& path,
                  std::vector<DecoderStep>& steps) {
  const std::string type = r.type(node, path);
  if (type == "Sequence") {
    const Json& list = r.at(node, path, "decoders");
    for (size_t i = 0; i < list.size(); ++i) {
      read_decoder(r, list[i], path + ".decoders[" + std::to_string(i) + "]", steps);
    }
  } else if (type == "Replace") {
    steps.push_back(
        {DecoderStep::kReplace, r.pattern(node, path), r.string(node, path, "content")});
  } else if (type == "ByteFallback") {
    steps.push_back({DecoderStep::kByteFallback, "", ""});
  } else if (type == "Fuse") {
    steps.push_back({DecoderStep::kFuse, "", ""});
  } else if (type == "Strip") {
    DecoderStep step{DecoderStep::kStrip, read_char(r, node, path, "content"), ""};
    for (const char* key : {"start", "stop"}) {
      const Json& n = r.at(node, path, key);
      if (!n.is_number_unsigned()) r.fail(path + "." + key, "expected a count, found " + n.dump());
      (std::string(key) == "start" ? step.start : step.stop) = n.get<size_t>();
    }
    steps.push_back(step);
  } else if (type == "Metaspace") {
    const Metaspace m = read_metaspace(r, node, path);
    DecoderStep step{DecoderStep::kMetaspace, m.replacement, ""};
    step.prepended = m.scheme != Metaspace::kNever;
    steps.push_back(step);
  } else {
    r.unsupported(path, node);
  }
}

// decoders/byte_fallback.rs: runs of <0xXX> tokens become their bytes when those are valid
// UTF-8, else one U+FFFD per byte.
std::vector<std::string> byte_fallback(const std::vector<std::string>& tokens) {
  std::vector<std::string> out;
  std::string bytes;
  auto flush = [&] {
    if (bytes.empty()) return;
    if (valid_utf8(bytes)) {
      out.push_back(bytes);
    } else {
      for (size_t i = 0; i < bytes.size(); ++i) out.emplace_back("\xef\xbf\xbd");
    }
    bytes.clear();
  };
  for (const auto& token : tokens) {
    if (token.size() == 6 && starts_with(token, "<0x") && token[5] == '>' &&
        std::isxdigit(static_cast<unsigned char>(token[3])) &&
        std::isxdigit(static_cast<unsigned char>(token[4]))) {
      bytes += static_cast<char>(std::stoi(token.substr(3, 2), nullptr, 16));
      continue;
    }
    flush();
    out.push_back(token);
  }
  flush();
  return out;
}

// decoders/strip.rs: up to `start` leading and `stop` trailing copies of one character.
std::string strip(const std::string& token, const std::string& c, size_t start, size_t stop) {
  size_t begin = 0, end = token.size();
  for (size_t i = 0; i < start && token.compare(begin, c.size(), c) == 0; ++i) begin += c.size();
  for (size_t i = 0;
       i < stop && end >= begin + c.size() && token.compare(end - c.size(), c.size(), c) == 0;
       ++i) {
    end -= c.size();
  }
  return token.substr(begin, end - begin);
}

std::vector<std::string> run_decoder(const std::vector<DecoderStep>& steps,
                                     std::vector<std::string> tokens) {
  for (const auto& step : steps) {
    switch (step.kind) {
      case DecoderStep::kReplace:
        for (auto& t : tokens) replace_all(t, step.a, step.b);
        break;
      case DecoderStep::kByteFallback:
        tokens = byte_fallback(tokens);
        break;
      case DecoderStep::kFuse: {
        std::string all;
        for (const auto& t : tokens) all += t;
        tokens = {all};
        break;
      }
      case DecoderStep::kStrip:
        for (auto& t : tokens) t = strip(t, step.a, step.start, step.stop);
        break;
      case DecoderStep::kMetaspace:
        // The first token loses its replacements (the prepended one); the others become spaces.
        for (size_t i = 0; i < tokens.size(); ++i) {
          replace_all(tokens[i], step.a, i == 0 && step.prepended ? "" : " ");
        }
        break;
    }
  }
  return tokens;
}

// ---------------------------------------------------------------- added tokens --------
struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

// The tokens one pass looks for (the raw text's, or the normalized text's), matched
// leftmost-longest as the aho-corasick automaton of added_vocabulary.rs does.
struct AddedMatcher {
  std::vector<std::pair<std::string, const AddedToken*>> patterns;  // longest first

  void finish() {
    std::stable_sort(patterns.begin(), patterns.end(),
                     [](const auto& x, const auto& y) { return x.first.size() > y.first.size(); });
  }

  // added_vocabulary.rs find_matches: (token or nullptr, [begin, end)) covering `text`.
  struct Split {
    const AddedToken* token;
    size_t begin, end;
  };
  std::vector<Split> find(const std::string& text) const {
    std::vector<Split> splits;
    size_t emitted = 0;  // end of the last split
    size_t from = 0;     // where the search goes on
    while (!patterns.empty() && from < text.size()) {
      const std::pair<std::string, const AddedToken*>* match = nullptr;
      size_t begin = from;
      for (; begin < text.size(); ++begin) {
        for (const auto& p : patterns) {
          if (text.compare(begin, p.first.size(), p.first) == 0) {
            match = &p;
            break;
          }
        }
        if (match) break;
      }
      if (!match) break;
      size_t end = begin + match->first.size();
      from = end;
      const AddedToken& token = *match->second;
      if (token.single_word) {
        size_t unused = 0;
        const bool left_ok = begin == 0 || !is_word_char(code_point_before(text, begin, &unused));
        const bool right_ok =
            end == text.size() || !is_word_char(code_point_at(text, end, &unused));
        if (!left_ok || !right_ok) continue;
      }
      if (token.lstrip) {
        size_t start = begin;
        while (start > emitted) {
          size_t previous = 0;
          if (!is_whitespace(code_point_before(text, start, &previous))) break;
          start = previous;
        }
        begin = start;
      }
      if (token.rstrip) {
        size_t length = 0;
        while (end < text.size() && is_whitespace(code_point_at(text, end, &length))) end += length;
        from = end;
      }
      if (emitted < begin) splits.push_back({nullptr, emitted, begin});
      splits.push_back({&token, begin, end});
      emitted = end;
    }
    if (emitted < text.size()) splits.push_back({nullptr, emitted, text.size()});
    return splits;
  }
};

// Splits the text pieces of `pieces` around the matcher's tokens; `before` runs on each text
// piece first (the normalizer, in the second pass). Empty pieces are dropped, as
// PreTokenizedString::split drops them.
template <typename Before>
std::vector<Piece> split_added(const AddedMatcher& matcher, std::vector<Piece> pieces,
                               Before before) {
  std::vector<Piece> out;
  for (auto& piece : pieces) {
    if (piece.token >= 0) {
      out.push_back(std::move(piece));
      continue;
    }
    const std::string text = before(piece.text);
    for (const auto& split : matcher.find(text)) {
      if (split.end == split.begin) continue;
      Piece p{text.substr(split.begin, split.end - split.begin),
              piece.at_origin && split.begin == 0, split.token ? split.token->id : -1};
      out.push_back(std::move(p));
    }
  }
  return out;
}

// ---------------------------------------------------------------- BPE model -----------
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

  // models/bpe/model.rs merge_word + word.rs merge_all.
  void tokenize(const std::string& word, std::vector<int32_t>& out) const {
    if (word.empty()) return;
    if (ignore_merges) {
      auto whole = vocab.find(word);
      if (whole != vocab.end()) {
        out.push_back(whole->second);
        return;
      }
    }
    struct Symbol {
      int32_t id;
      int prev, next;
      size_t length;
    };
    std::vector<Symbol> symbols;
    auto add = [&](int32_t id, size_t length) {
      const int index = static_cast<int>(symbols.size());
      if (!symbols.empty()) symbols.back().next = index;
      symbols.push_back({id, index - 1, -1, length});
    };
    bool have_unk = false;
    int32_t unk_id = -1;
    size_t unk_length = 0;
    auto unk = [&]() -> int32_t {
      auto it = vocab.find(unk_token);
      if (it == vocab.end()) {
        throw RequestError("tokenizer: the BPE model's unk_token \"" + unk_token +
                           "\" is not in its vocabulary");
      }
      return it->second;
    };
    for (size_t i = 0; i < word.size();) {
      size_t length = 0;
      code_point_at(word, i, &length);
      std::string s = word.substr(i, length);
      const bool first = i == 0, last = i + length >= word.size();
      i += length;
      if (!first) s.insert(0, continuing_subword_prefix);
      if (last) s += end_of_word_suffix;
      auto known = vocab.find(s);
      if (known != vocab.end()) {
        if (have_unk) {
          add(unk_id, unk_length);
          have_unk = false;
        }
        add(known->second, length);
        continue;
      }
      if (byte_fallback) {
        bool all = true;
        for (unsigned char b : s) all = all && byte_ids[b] >= 0;
        if (all) {
          for (unsigned char b : s) add(byte_ids[b], 1);
          continue;  // as the Rust code does: a pending unknown stays pending
        }
      }
      if (!unk_token.empty()) {
        if (have_unk && fuse_unk) {
          unk_length += length;
        } else {
          if (have_unk) add(unk_id, unk_length);
          unk_id = unk();
          unk_length = length;
          have_unk = true;
        }
      }
    }
    if (have_unk) add(unk_id, unk_length);

    // Lowest rank first; among equal ranks, the leftmost.
    struct Candidate {
      uint32_t rank;
      int pos;
      int32_t id;
    };
    auto later = [](const Candidate& x, const Candidate& y) {
      return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos;
    };
    std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> queue(later);
    auto consider = [&](int left) {
      const int right = symbols[left].next;
      if (right < 0) return;
      auto it = merges.find(key(symbols[left].id, symbols[right].id));
      if (it != merges.end()) queue.push({it->second.rank, left, it->second.id});
    };
    for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i) consider(i);
    while (!queue.empty()) {
      const Candidate top = queue.top();
      queue.pop();
      Symbol& left = symbols[top.pos];
      if (left.length == 0 || left.next < 0) continue;
      Symbol& right = symbols[left.next];
      auto it = merges.find(key(left.id, right.id));
      if (it == merges.end() || it->second.id != top.id) continue;  // an expired candidate
      left.id = top.id;
      left.length += right.length;
      left.next = right.next;
      right.length = 0;
      if (left.next >= 0) symbols[left.next].prev = top.pos;
      if (left.prev >= 0) consider(left.prev);
      consider(top.pos);
    }
    for (const auto& s : symbols) {
      if (s.length > 0) out.push_back(s.id);
    }
  }
};

void read_bpe(const Reader& r, const Json& node, Bpe& bpe) {
  const std::string path = "model";
  if (!node.is_object()) r.fail(path, "missing");
  if (node.contains("type") && r.type(node, path) != "BPE")
    r.unsupported(path + ".type", node.at("type"));
  const Json& dropout = node.value("dropout", Json());
  if (!dropout.is_null() && !(dropout.is_number() && dropout.get<double>() == 0.0)) {
    r.fail(path + ".dropout", "BPE dropout is random; only null or 0 is supported");
  }
  const Json& vocab = r.at(node, path, "vocab");
  if (!vocab.is_object()) r.fail(path + ".vocab", "expected an object of token: id");
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer()) r.fail(path + ".vocab." + token, "expected an id");
    bpe.vocab[token] = id.get<int32_t>();
    bpe.vocab_r[id.get<int32_t>()] = token;
  }
  auto optional_string = [&](const char* key) {
    if (!node.contains(key) || node.at(key).is_null()) return std::string();
    return r.string(node, path, key);
  };
  bpe.unk_token = optional_string("unk_token");
  bpe.continuing_subword_prefix = optional_string("continuing_subword_prefix");
  bpe.end_of_word_suffix = optional_string("end_of_word_suffix");
  bpe.fuse_unk = r.boolean(node, path, "fuse_unk", false);
  bpe.byte_fallback = r.boolean(node, path, "byte_fallback", false);
  bpe.ignore_merges = r.boolean(node, path, "ignore_merges", false);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    auto it = bpe.vocab.find(name);
    bpe.byte_ids[b] = it == bpe.vocab.end() ? -1 : it->second;
  }

  const Json& merges = r.at(node, path, "merges");
  if (!merges.is_array()) r.fail(path + ".merges", "expected an array");
  auto id_of = [&](const std::string& token, const std::string& where) {
    auto it = bpe.vocab.find(token);
    if (it == bpe.vocab.end()) r.fail(where, "\"" + token + "\" is not in the vocabulary");
    return it->second;
  };
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const std::string where = path + ".merges[" + std::to_string(rank) + "]";
    const Json& m = merges[rank];
    std::string a, b;
    if (m.is_string()) {  // "a b": exactly one space
      const std::string line = m.get<std::string>();
      const size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
        r.fail(where, "expected \"left right\", found \"" + line + "\"");
      }
      a = line.substr(0, space);
      b = line.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      r.fail(where, "expected \"left right\" or [left, right], found " + m.dump());
    }
    std::string merged = b;
    if (!bpe.continuing_subword_prefix.empty() && starts_with(b, bpe.continuing_subword_prefix)) {
      merged = b.substr(bpe.continuing_subword_prefix.size());
    }
    bpe.merges[Bpe::key(id_of(a, where), id_of(b, where))] = {static_cast<uint32_t>(rank),
                                                              id_of(a + merged, where)};
  }
}

// ---------------------------------------------------------------- post-processor ------
// The single-sequence template: special token ids, with -1 standing for the sequence.
std::vector<int32_t> read_template(const Reader& r, const Json& node) {
  const std::string path = "post_processor";
  if (node.is_null()) return {-1};
  if (r.type(node, path) != "TemplateProcessing") r.unsupported(path, node);
  const Json& specials = r.at(node, path, "special_tokens");
  const Json& single = r.at(node, path, "single");
  std::vector<int32_t> items;
  for (size_t i = 0; i < single.size(); ++i) {
    const std::string where = path + ".single[" + std::to_string(i) + "]";
    const Json& item = single[i];
    if (item.contains("Sequence")) {
      if (r.string(item.at("Sequence"), where + ".Sequence", "id") != "A") {
        r.fail(where, "a single-sequence template can only hold sequence A");
      }
      items.push_back(-1);
    } else if (item.contains("SpecialToken")) {
      const std::string name = r.string(item.at("SpecialToken"), where + ".SpecialToken", "id");
      if (!specials.contains(name)) r.fail(where, "\"" + name + "\" is not in special_tokens");
      const std::string special = "post_processor.special_tokens." + name;
      for (const auto& id : r.at(specials.at(name), special, "ids")) {
        items.push_back(id.get<int32_t>());
      }
    } else {
      r.fail(where, "expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
    }
  }
  return items;
}

}  // namespace

// ---------------------------------------------------------------- the tokenizer -------
struct HfTokenizer::Impl {
  std::vector<AddedToken> added;  // in the file's order
  std::unordered_map<std::string, int32_t> added_ids;
  std::unordered_map<int32_t, size_t> added_by_id;  // id -> index in `added`
  std::vector<NormalizerStep> normalizer;
  std::vector<Metaspace> pre_tokenizer;
  Bpe model;
  std::vector<int32_t> single_template{-1};
  bool has_decoder = false;
  std::vector<DecoderStep> decoder;
  AddedMatcher raw_matcher, normalized_matcher;

  void refresh_matchers() {
    raw_matcher.patterns.clear();
    normalized_matcher.patterns.clear();
    for (const auto& token : added) {
      if (token.content.empty()) continue;
      if (token.normalized) {
        // added_vocabulary.rs: a normalized token is looked for as the normalizer writes it.
        std::string pattern = normalize(normalizer, token.content);
        if (!pattern.empty()) normalized_matcher.patterns.emplace_back(pattern, &token);
      } else {
        raw_matcher.patterns.emplace_back(token.content, &token);
      }
    }
    raw_matcher.finish();
    normalized_matcher.finish();
  }

  void add(AddedToken token) {
    if (added_ids.count(token.content)) return;
    added_ids[token.content] = token.id;
    added_by_id[token.id] = added.size();
    added.push_back(std::move(token));
  }
};

HfTokenizer::HfTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HfTokenizer::HfTokenizer(HfTokenizer&&) noexcept = default;
HfTokenizer& HfTokenizer::operator=(HfTokenizer&&) noexcept = default;
HfTokenizer::~HfTokenizer() = default;

HfTokenizer HfTokenizer::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CheckpointError(path + ": cannot be read");
  std::stringstream text;
  text << in.rdbuf();
  return from_json_text(text.str(), path);
}

HfTokenizer HfTokenizer::from_json_text(const std::string& text, const std::string& origin) {
  const Reader r{origin};
  Json json;
  try {
    json = Json::parse(text);
  } catch (const Json::exception& e) {
    throw CheckpointError(origin + ": not JSON: " + e.what());
  }
  if (!json.is_object()) r.fail("(top level)", "expected an object");
  auto impl = std::make_unique<Impl>();
  try {
    read_normalizer(r, json.value("normalizer", Json()), "normalizer", impl->normalizer);
    read_pre_tokenizer(r, json.value("pre_tokenizer", Json()), "pre_tokenizer",
                       impl->pre_tokenizer);
    read_bpe(r, json.value("model", Json()), impl->model);
    impl->single_template = read_template(r, json.value("post_processor", Json()));
    const Json decoder = json.value("decoder", Json());
    impl->has_decoder = !decoder.is_null();
    if (impl->has_decoder) read_decoder(r, decoder, "decoder", impl->decoder);
    const Json added = json.value("added_tokens", Json::array());
    for (size_t i = 0; i < added.size(); ++i) {
      const std::string where = "added_tokens[" + std::to_string(i) + "]";
      const Json& t = added[i];
      AddedToken token;
      token.content = r.string(t, where, "content");
      const Json& id = r.at(t, where, "id");
      if (!id.is_number_integer()) r.fail(where + ".id", "expected an id, found " + id.dump());
      token.id = id.get<int32_t>();
      token.special = r.boolean(t, where, "special", false);
      token.normalized = r.boolean(t, where, "normalized", !token.special);
      token.single_word = r.boolean(t, where, "single_word", false);
      token.lstrip = r.boolean(t, where, "lstrip", false);
      token.rstrip = r.boolean(t, where, "rstrip", false);
      impl->add(std::move(token));
    }
  } catch (const Json::exception& e) {
    throw CheckpointError(origin + ": " + e.what());
  }
  impl->refresh_matchers();
  return HfTokenizer(std::move(impl));
}

void HfTokenizer::add_special_token(const std::string& content, int32_t id) {
  AddedToken token;
  token.content = content;
  token.id = id;
  token.special = true;
  impl_->add(std::move(token));
  impl_->refresh_matchers();
}

std::vector<int32_t> HfTokenizer::encode(const std::string& text, bool add_special_tokens) const {
  const Impl& t = *impl_;
  std::vector<Piece> pieces{{text, true, -1}};
  // 1. Added tokens matched on the raw text; 2. the normalizer on each remaining piece, then
  // the added tokens matched on normalized text (added_vocabulary.rs extract_and_normalize).
  pieces = split_added(t.raw_matcher, std::move(pieces), [](const std::string& s) { return s; });
  pieces = split_added(t.normalized_matcher, std::move(pieces),
                       [&](const std::string& s) { return normalize(t.normalizer, s); });
  for (const Metaspace& step : t.pre_tokenizer) {
    std::vector<Piece> words;
    for (auto& piece : pieces) {
      if (piece.token >= 0) {
        words.push_back(std::move(piece));
        continue;
      }
      for (auto& word : metaspace_words(step, piece)) {
        if (!word.text.empty()) words.push_back(std::move(word));
      }
    }
    pieces = std::move(words);
  }
  std::vector<int32_t> ids;
  for (const auto& piece : pieces) {
    if (piece.token >= 0) {
      ids.push_back(piece.token);
    } else {
      t.model.tokenize(piece.text, ids);
    }
  }
  if (!add_special_tokens) return ids;
  std::vector<int32_t> out;
  for (int32_t item : t.single_template) {
    if (item < 0) {
      out.insert(out.end(), ids.begin(), ids.end());
    } else {
      out.push_back(item);
    }
  }
  return out;
}

std::string HfTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  const Impl& t = *impl_;
  std::vector<std::string> tokens;
  for (int32_t id : ids) {
    auto added = t.added_by_id.find(id);
    if (added != t.added_by_id.end()) {
      const AddedToken& token = t.added[added->second];
      if (!(skip_special_tokens && token.special)) tokens.push_back(token.content);
      continue;
    }
    auto piece = t.model.vocab_r.find(id);
    if (piece != t.model.vocab_r.end()) tokens.push_back(piece->second);
  }
  if (!t.has_decoder) {  // tokenizer/mod.rs: without a decoder the tokens join with spaces
    std::string text;
    for (size_t i = 0; i < tokens.size(); ++i) text += (i ? " " : "") + tokens[i];
    return text;
  }
  std::string text;
  for (const auto& piece : run_decoder(t.decoder, std::move(tokens))) text += piece;
  return text;
}

int32_t HfTokenizer::token_to_id(const std::string& token) const {
  auto added = impl_->added_ids.find(token);
  if (added != impl_->added_ids.end()) return added->second;
  auto known = impl_->model.vocab.find(token);
  return known == impl_->model.vocab.end() ? -1 : known->second;
}

bool HfTokenizer::is_special(int32_t id) const {
  auto added = impl_->added_by_id.find(id);
  return added != impl_->added_by_id.end() && impl_->added[added->second].special;
}

int32_t HfTokenizer::vocab_size() const {
  int32_t size = 0;
  for (const auto& [id, piece] : impl_->model.vocab_r) size = std::max(size, id + 1);
  for (const auto& token : impl_->added) size = std::max(size, token.id + 1);
  return size;
}

int32_t HfTokenizer::template_first_special() const {
  for (int32_t item : impl_->single_template) {
    if (item >= 0) return item;
  }
  return -1;
}

}  // namespace llava
