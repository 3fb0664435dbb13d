// tokenizer.json, run as huggingface/tokenizers runs it (tokenizers/src/tokenizer/mod.rs,
// added_vocabulary.rs, models/bpe/, normalizers/, pre_tokenizers/metaspace.rs, decoders/).
// Encoding: added tokens out of the raw text -> normalizer on each remaining piece -> added
// tokens marked `normalized` -> pre-tokenizer -> BPE on each word -> template.
// The steps live in hf_normalizer, hf_pre_tokenizer, hf_bpe, hf_added_tokens and hf_decoder;
// this file reads the file and runs them in that order.
#include "coordinator/hf_tokenizer.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include "common/errors.h"
#include "common/json_depth.h"
#include "coordinator/hf_added_tokens.h"
#include "coordinator/hf_bpe.h"
#include "coordinator/hf_decoder.h"
#include "coordinator/hf_json_reader.h"
#include "coordinator/hf_normalizer.h"
#include "coordinator/hf_pre_tokenizer.h"

namespace llava {

using hf::AddedMatcher;
using hf::AddedToken;
using hf::Bpe;
using hf::DecoderStep;
using hf::Json;
using hf::JsonReader;
using hf::Metaspace;
using hf::NormalizerStep;
using hf::Piece;

namespace {

// ---------------------------------------------------------------- post-processor ------
// The single-sequence template: special token ids, with -1 standing for the sequence.
std::vector<int32_t> read_template(const JsonReader& r, const Json& node) {
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
        std::string pattern = hf::normalize(normalizer, token.content);
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
  const JsonReader r{origin};
  Json json;
  try {
    json = parse_json(text);
  } catch (const Json::exception& e) {
    throw CheckpointError(origin + ": not JSON: " + e.what());
  }
  if (!json.is_object()) r.fail("(top level)", "expected an object");
  auto impl = std::make_unique<Impl>();
  try {
    hf::read_normalizer(r, json.value("normalizer", Json()), "normalizer", impl->normalizer);
    hf::read_pre_tokenizer(r, json.value("pre_tokenizer", Json()), "pre_tokenizer",
                           impl->pre_tokenizer);
    hf::read_bpe(r, json.value("model", Json()), impl->model);
    impl->single_template = read_template(r, json.value("post_processor", Json()));
    const Json decoder = json.value("decoder", Json());
    impl->has_decoder = !decoder.is_null();
    if (impl->has_decoder) hf::read_decoder(r, decoder, "decoder", impl->decoder);
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
  pieces =
      hf::split_added(t.raw_matcher, std::move(pieces), [](const std::string& s) { return s; });
  pieces = hf::split_added(t.normalized_matcher, std::move(pieces),
                           [&](const std::string& s) { return hf::normalize(t.normalizer, s); });
  for (const Metaspace& step : t.pre_tokenizer) {
    std::vector<Piece> words;
    for (auto& piece : pieces) {
      if (piece.token >= 0) {
        words.push_back(std::move(piece));
        continue;
      }
      for (auto& word : hf::metaspace_words(step, piece)) {
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
  for (const auto& piece : hf::run_decoder(t.decoder, std::move(tokens))) text += piece;
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

bool HfTokenizer::is_plain(int32_t id) const {
  auto added = impl_->added_by_id.find(id);
  if (added != impl_->added_by_id.end()) return !impl_->added[added->second].special;
  auto piece = impl_->model.vocab_r.find(id);
  return piece != impl_->model.vocab_r.end() && hf::byte_token(piece->second) < 0;
}

std::string HfTokenizer::piece(int32_t id) const {
  auto added = impl_->added_by_id.find(id);
  if (added != impl_->added_by_id.end()) return impl_->added[added->second].content;
  auto piece = impl_->model.vocab_r.find(id);
  return piece == impl_->model.vocab_r.end() ? std::string() : piece->second;
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
