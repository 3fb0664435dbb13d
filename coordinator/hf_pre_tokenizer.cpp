// The Metaspace pre-tokenizer, read and run as pre_tokenizers/metaspace.rs does.
#include "coordinator/hf_pre_tokenizer.h"

#include "coordinator/hf_text.h"

namespace llava::hf {

// As pre_tokenizers/metaspace.rs deserializes: prepend_scheme defaults to "always";
// add_prefix_space: false means "never" and contradicts any other scheme.
Metaspace read_metaspace(const JsonReader& r, const Json& node, const std::string& path) {
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

void read_pre_tokenizer(const JsonReader& r, const Json& node, const std::string& path,
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

}  // namespace llava::hf
