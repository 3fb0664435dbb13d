// BPE as models/bpe/model.rs runs it: a word's characters (or their bytes, or unk), then
// the lowest-ranked merge first until none applies; and the model read from its JSON.
#include "coordinator/hf_bpe.h"

#include <cstdio>
#include <queue>

#include "common/errors.h"
#include "coordinator/hf_text.h"

namespace llava::hf {

void Bpe::tokenize(const std::string& word, std::vector<int32_t>& out) const {
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

void read_bpe(const JsonReader& r, const Json& node, Bpe& bpe) {
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

}  // namespace llava::hf
