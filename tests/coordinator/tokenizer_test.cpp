#include "coordinator/tokenizer.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "coordinator/chat_template.h"

namespace {

const std::string kData = std::string(LLAVA_PIPE_SOURCE_DIR) + "/tests/data/";

nlohmann::json load_json(const std::string& relative) {
  nlohmann::json j;
  std::ifstream(kData + relative) >> j;
  return j;
}

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

class TokenizerTest : public testing::Test {
 protected:
  llava::Tokenizer tokenizer{kData + "tiny-llava"};
};

TEST_F(TokenizerTest, MatchesTransformersOnFiftyStrings) {
  auto reference = load_json("reference/tokenizer.json");
  ASSERT_EQ(reference["cases"].size(), 50u);
  for (const auto& c : reference["cases"]) {
    const std::string text = c["text"];
    EXPECT_EQ(tokenizer.encode(text), c["ids"].get<std::vector<int32_t>>()) << "text: " << text;
  }
}

TEST_F(TokenizerTest, DecodesAsTransformersDoesSkippingSpecialTokens) {
  auto reference = load_json("reference/tokenizer.json");
  for (const auto& c : reference["cases"]) {
    EXPECT_EQ(tokenizer.decode(c["ids"].get<std::vector<int32_t>>()), c["decoded"].get<std::string>())
        << "text: " << c["text"].get<std::string>();
  }
}

// tiny-llava has both files, and tokenizer.json wins: the SentencePiece path, on its own.
// tiny-llava's tokenizer.model alone in a folder (the test's own).
class SentencePieceTokenizer : public testing::Test {
 protected:
  SentencePieceTokenizer()
      : folder_(make_folder()), tokenizer(folder_.string(), {{"<image>", 800}, {"<pad>", 801}}) {}
  ~SentencePieceTokenizer() override { std::filesystem::remove_all(folder_); }
  static std::filesystem::path make_folder() {
    const auto folder =
        std::filesystem::path(testing::TempDir()) /
        ("sentencepiece-" +
         std::string(testing::UnitTest::GetInstance()->current_test_info()->name()));
    std::filesystem::remove_all(folder);
    std::filesystem::create_directories(folder);
    std::filesystem::copy_file(kData + "tiny-llava/tokenizer.model", folder / "tokenizer.model");
    return folder;
  }
  std::filesystem::path folder_;
  llava::Tokenizer tokenizer;
};

TEST_F(SentencePieceTokenizer, MatchesTransformersOnFiftyStringsWithoutTokenizerJson) {
  auto reference = load_json("reference/tokenizer.json");
  for (const auto& c : reference["cases"]) {
    const std::string text = c["text"];
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tokenizer.encode(text), ids) << "text: " << text;
    EXPECT_EQ(tokenizer.decode(ids), c["decoded"].get<std::string>()) << "text: " << text;
  }
}

// The stream's window on the SentencePiece path: every reference case in turn, with BOS,
// EOS and image tokens between them, as one answer of hundreds of tokens.
TEST_F(SentencePieceTokenizer, ALongStreamGivesTheFullDecode) {
  const auto reference = load_json("reference/tokenizer.json");
  std::vector<int32_t> ids;
  for (int round = 0; round < 4; ++round) {
    for (const auto& c : reference["cases"]) {
      for (int32_t id : c["ids"]) ids.push_back(id);
      ids.push_back(round % 2 ? 2 : 800);
    }
  }
  ASSERT_GT(ids.size(), 20 * llava::Detokenizer::kWindow);
  llava::Detokenizer stream(tokenizer);
  std::string joined;
  for (int32_t id : ids) {
    const std::string chunk = stream.push(id);
    ASSERT_TRUE(valid_utf8(chunk));
    joined += chunk;
  }
  joined += stream.finish();
  EXPECT_EQ(joined, tokenizer.decode(ids));
}

TEST_F(SentencePieceTokenizer, TokenTextsMakeTheDecodedText) {
  EXPECT_EQ(tokenizer.token_text(tokenizer.eos_id()), "</s>");
  EXPECT_EQ(tokenizer.token_text(800), "<image>");
  EXPECT_EQ(tokenizer.token_text(5000), "");
  const auto reference = load_json("reference/tokenizer.json");
  for (const auto& c : reference["cases"]) {
    std::string joined;
    for (int32_t id : c["ids"]) {
      if (!tokenizer.is_special(id)) joined += tokenizer.token_text(id);
    }
    const std::string decoded = c["decoded"];
    EXPECT_TRUE(joined == decoded || joined == " " + decoded) << decoded << " | " << joined;
  }
}

TEST_F(TokenizerTest, KnowsTheAddedTokens) {
  EXPECT_EQ(tokenizer.token_id("<image>"), 800);
  EXPECT_EQ(tokenizer.token_id("<pad>"), 801);
  EXPECT_EQ(tokenizer.bos_id(), 1);
  EXPECT_EQ(tokenizer.eos_id(), 2);
  EXPECT_TRUE(tokenizer.is_special(800));
  EXPECT_FALSE(tokenizer.is_special(300));
}

TEST_F(TokenizerTest, PromptsOfTheReferenceCasesTokenizeIdentically) {
  for (const char* file : {"reference/a_cases.json", "reference/b_cases.json"}) {
    for (const auto& c : load_json(file)) {
      EXPECT_EQ(tokenizer.encode(c["prompt"].get<std::string>()),
                c["prompt_ids"].get<std::vector<int32_t>>());
    }
  }
}

TEST_F(TokenizerTest, StreamingNeverSplitsACharacter) {
  const std::string text = "emoji 😀🎉 and 日本語 café ☃ done";
  auto ids = tokenizer.encode(text, /*add_bos=*/false);
  llava::Detokenizer stream(tokenizer);
  std::string joined;
  for (int32_t id : ids) {
    std::string chunk = stream.push(id);
    EXPECT_TRUE(valid_utf8(chunk)) << "chunk after token " << id;
    joined += chunk;
  }
  joined += stream.finish();
  EXPECT_EQ(joined, tokenizer.decode(ids));
  EXPECT_EQ(joined, text);
}

TEST(ChatTemplate, LlavaOnePointFiveTemplate) {
  EXPECT_EQ(llava::apply_chat_template("USER: {images}{prompt} ASSISTANT:", "What is this?", 1),
            "USER: <image>\nWhat is this? ASSISTANT:");
  EXPECT_EQ(llava::apply_chat_template("USER: {images}{prompt} ASSISTANT:", "Compare.", 2),
            "USER: <image>\n<image>\nCompare. ASSISTANT:");
  EXPECT_EQ(llava::apply_chat_template("Q: {prompt}\nA:", "{prompt} {images}", 1),
            "Q: <image>\n{prompt} {images}\nA:");
  // The prompt's own placeholders, one per image, place the images (transformers' prompts).
  EXPECT_EQ(llava::apply_chat_template(
                "USER: {images}{prompt} ASSISTANT:", "Left: <image> right: <image>\nSame?", 2),
            "USER: Left: <image> right: <image>\nSame? ASSISTANT:");
  EXPECT_EQ(llava::apply_chat_template("Q: {prompt}\nA:", "<image>\nWhat?", 1),
            "Q: <image>\nWhat?\nA:");
  try {
    llava::apply_chat_template("USER: {images}{prompt} ASSISTANT:", "a <image> b <image>", 1);
    FAIL() << "two placeholders for one image";
  } catch (const llava::RequestError& e) {
    EXPECT_EQ(std::string(e.what()),
              "the prompt has 2 <image> placeholders for 1 image: give one per image, where each "
              "goes, or none (the images then go before the prompt)");
  }
}

TEST(ChatTemplate, ExpandsEachImageToItsEmbeddingCount) {
  auto expanded = llava::expand_image_tokens({1, 800, 13, 800, 5}, 800, 3);
  EXPECT_EQ(expanded, (std::vector<int32_t>{1, 800, 800, 800, 13, 800, 800, 800, 5}));
}

}  // namespace
