// tokenizer.json through HfTokenizer, else SentencePiece with transformers' splitting and
// prefix rules.
#include "coordinator/tokenizer.h"

#include <sentencepiece_processor.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/errors.h"
#include "common/json_depth.h"
#include "coordinator/hf_decoder.h"
#include "coordinator/hf_tokenizer.h"

namespace llava {
namespace {

const std::string kSpaceMark = "\xe2\x96\x81";  // "▁"

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string replace_spaces(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == ' ') {
      out += kSpaceMark;
    } else {
      out += c;
    }
  }
  return out;
}

// A special token's name in tokenizer_config.json: "<s>" or {"content": "<s>", ...}.
std::string config_token(const nlohmann::json& config, const char* key, const std::string& fallback) {
  if (!config.contains(key)) return fallback;
  const auto& value = config.at(key);
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content")) return value.at("content").get<std::string>();
  return fallback;
}

}  // namespace

Tokenizer::Tokenizer(const std::string& folder, const std::map<std::string, int32_t>& extra) {
  // transformers' AutoProcessor builds the fast tokenizer from tokenizer.json when a
  // checkpoint has both files, so that file wins here too.
  const std::string json_path = folder + "/tokenizer.json";
  if (std::filesystem::exists(json_path)) {
    json_ = std::make_unique<HfTokenizer>(HfTokenizer::from_file(json_path));
    for (const auto& [content, id] : extra) json_->add_special_token(content, id);
    nlohmann::json config = nlohmann::json::object();
    const std::string config_path = folder + "/tokenizer_config.json";
    if (std::filesystem::exists(config_path)) {
      try {
        config = parse_json(read_all(config_path));
      } catch (const nlohmann::json::exception& e) {
        throw CheckpointError(config_path + ": " + e.what());
      }
    }
    bos_id_ = json_->token_to_id(config_token(config, "bos_token", "<s>"));
    if (bos_id_ < 0) bos_id_ = json_->template_first_special();
    eos_id_ = json_->token_to_id(config_token(config, "eos_token", "</s>"));
    pieces_ = json_->vocab_size();
    find_anchor();
    return;
  }

  const std::string model_path = folder + "/tokenizer.model";
  if (!std::filesystem::exists(model_path)) {
    throw CheckpointError(folder + ": neither tokenizer.json nor tokenizer.model (the coordinator "
                          "needs the tokenizer)");
  }
  const std::string model = read_all(model_path);
  decoder_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  auto status = decoder_->LoadFromSerializedProto(model);
  if (!status.ok()) throw CheckpointError(model_path + ": " + status.ToString());
  // The encoder is the same model with NormalizerSpec.add_dummy_prefix = false: we add
  // the "▁" prefix ourselves where transformers does. Protobuf merges a repeated embedded
  // message field, so appending {normalizer_spec (3): {add_dummy_prefix (3): false}}
  // overrides that one flag.
  encoder_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
  status = encoder_->LoadFromSerializedProto(model + std::string("\x1a\x02\x18\x00", 4));
  if (!status.ok()) throw CheckpointError(model_path + ": " + status.ToString());
  pieces_ = decoder_->GetPieceSize();
  bos_id_ = decoder_->bos_id();
  eos_id_ = decoder_->eos_id();

  for (int32_t id : {decoder_->unk_id(), bos_id_, eos_id_}) {
    if (id >= 0) added_[decoder_->IdToPiece(id)] = id;
  }
  for (const auto& [content, id] : extra) added_[content] = id;
  const std::string added_path = folder + "/added_tokens.json";  // {"<image>": 32000, ...}
  if (std::filesystem::exists(added_path)) {
    try {
      const auto added = parse_json(read_all(added_path));
      for (const auto& [content, id] : added.items()) added_[content] = id.get<int32_t>();
    } catch (const nlohmann::json::exception& e) {
      throw CheckpointError(added_path + ": " + e.what());
    }
  }
  find_anchor();
}

void Tokenizer::find_anchor() {
  for (const char* text : {"a", ".", "0"}) {
    const std::vector<int32_t> ids = encode(text, /*add_bos=*/false);
    if (ids.size() == 1 && is_plain(ids[0])) {
      anchor_ = ids[0];
      anchor_text_ = decode(ids);
      return;
    }
  }
}

std::string Tokenizer::token_text(int32_t id) const {
  if (id < 0) return "";
  if (is_special(id)) {
    if (json_) return json_->piece(id);
    for (const auto& [content, added] : added_) {
      if (added == id) return content;
    }
    return id < decoder_->GetPieceSize() ? decoder_->IdToPiece(id) : "";
  }
  if (id >= pieces_) return "";
  const std::string piece = json_ ? json_->piece(id) : decoder_->IdToPiece(id);
  if (const int byte = hf::byte_token(piece); byte >= 0 && (json_ || decoder_->IsByte(id))) {
    return std::string(1, static_cast<char>(byte));
  }
  if (anchor_ < 0) return decode({id});
  const std::string both = decode({anchor_, id});
  return both.substr(std::min(anchor_text_.size(), both.size()));
}

Tokenizer::~Tokenizer() = default;

int32_t Tokenizer::token_id(const std::string& added_token) const {
  if (json_) return json_->token_to_id(added_token);
  auto it = added_.find(added_token);
  return it == added_.end() ? -1 : it->second;
}

bool Tokenizer::is_special(int32_t id) const {
  if (id < 0 || id >= pieces_) return true;
  if (json_) return json_->is_special(id);
  if (decoder_->IsControl(id) || decoder_->IsUnknown(id)) return true;
  for (const auto& [content, added] : added_) {
    if (added == id) return true;
  }
  return false;
}

void Tokenizer::encode_piece(const std::string& text, bool at_start,
                             std::vector<int32_t>& out) const {
  if (text.empty()) return;
  std::string normalized = replace_spaces(text);
  if (at_start && normalized.rfind(kSpaceMark, 0) != 0) normalized = kSpaceMark + normalized;
  std::vector<int> ids;
  auto status = encoder_->Encode(normalized, &ids);
  if (!status.ok()) throw RequestError("tokenizer: " + status.ToString());
  out.insert(out.end(), ids.begin(), ids.end());
}

std::vector<int32_t> Tokenizer::encode(const std::string& text, bool add_bos) const {
  if (json_) return json_->encode(text, add_bos);
  std::vector<int32_t> out;
  if (add_bos) out.push_back(bos_id_);
  size_t start = 0, position = 0;
  while (position < text.size()) {
    // Leftmost match, longest token first.
    const std::pair<const std::string, int32_t>* match = nullptr;
    for (const auto& entry : added_) {
      if (text.compare(position, entry.first.size(), entry.first) == 0 &&
          (!match || entry.first.size() > match->first.size())) {
        match = &entry;
      }
    }
    if (!match) {
      ++position;
      continue;
    }
    encode_piece(text.substr(start, position - start), start == 0, out);
    out.push_back(match->second);
    position += match->first.size();
    start = position;
  }
  encode_piece(text.substr(start), start == 0, out);
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  if (json_) return json_->decode(ids, /*skip_special_tokens=*/true);
  std::vector<int> kept;
  for (int32_t id : ids) {
    if (!is_special(id)) kept.push_back(id);
  }
  std::string text;
  auto status = decoder_->Decode(kept, &text);
  if (!status.ok()) throw RequestError("tokenizer: " + status.ToString());
  return text;
}

bool Tokenizer::is_plain(int32_t id) const {
  if (is_special(id)) return false;
  if (json_) return json_->is_plain(id);
  return !decoder_->IsByte(id) && !decoder_->IsUnused(id);
}

Detokenizer::Detokenizer(const Tokenizer& tokenizer, bool continues_text) : tokenizer_(tokenizer) {
  if (continues_text && tokenizer.anchor() >= 0) {  // start after a plain token's text
    window_.push_back(tokenizer.anchor());
    emitted_ = tokenizer.decode(window_).size();
  }
}

std::string Detokenizer::push(int32_t token) {
  window_.push_back(token);
  const std::string text = tokenizer_.decode(window_);
  // U+FFFD at the end: byte-fallback tokens that do not yet form a whole character.
  static const std::string kReplacement = "\xef\xbf\xbd";
  if (text.size() >= kReplacement.size() &&
      text.compare(text.size() - kReplacement.size(), kReplacement.size(), kReplacement) == 0) {
    return "";
  }
  if (text.size() < emitted_) return "";
  std::string fresh = text.substr(emitted_);
  emitted_ = text.size();
  if (window_.size() >= kWindow) {
    // Everything is out: start again at the last plain token, the new window's text being
    // what the old one showed of it and after it.
    for (size_t i = window_.size(); i-- > 1;) {
      if (!tokenizer_.is_plain(window_[i])) continue;
      window_.erase(window_.begin(), window_.begin() + static_cast<long>(i));
      emitted_ = tokenizer_.decode(window_).size();
      break;
    }
  }
  return fresh;
}

std::string Detokenizer::finish() {
  std::string text = tokenizer_.decode(window_);
  std::string rest = text.size() > emitted_ ? text.substr(emitted_) : "";
  emitted_ = text.size();
  return rest;
}

TokenTable token_table(const Tokenizer& tokenizer) {
  TokenTable table;
  for (int32_t id = 0; id < tokenizer.vocab_size(); ++id)
    table.push_back(tokenizer.is_special(id) ? std::string() : tokenizer.token_text(id));
  return table;
}

}  // namespace llava
