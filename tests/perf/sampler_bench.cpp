// The language worker's host time for one sampled token: one row of 32,064 scores (a
// LLaVA-1.5 vocabulary; a few tokens far ahead, as a trained model's row has; and a flat
// row, as a random model's or a high temperature gives, where draws land deep) through
// Sampler::next under common settings; and JSON mode's mask over a made-up vocabulary of
// 1-7 byte tokens (letters, some punctuation) inside a string, where most tokens fit whole
// (the most bytes it tries), and after a key, where only a colon may come; and a schema's
// (response_format json_schema) inside a string of 64 it lists, where every token whose
// first byte fits is tried. Prints a table and one JSON line.
//   sampler_bench [--draws N]
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/json_schema.h"
#include "stages/language/sampler.h"

int main(int argc, char** argv) {
  int draws = 2000;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--draws") == 0) draws = std::max(1, std::atoi(argv[i + 1]));
  }
  std::mt19937 g(1);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> row(32064);
  for (float& s : row) s = normal(g);
  for (int i = 0; i < 4; ++i) row[g() % row.size()] = 16.0f + 3.0f * static_cast<float>(i);
  std::vector<float> flat(row.size());  // no token far ahead: the best 64 hold ~2%
  std::normal_distribution<float> unit(0.0f, 1.0f);
  for (float& s : flat) s = unit(g);
  std::vector<int32_t> history(4096);
  for (int32_t& id : history) id = static_cast<int32_t>(g() % row.size());

  // JSON mode's vocabulary: 0 "{", 1 "\"", 2 the end (no bytes), then made-up pieces.
  auto table = std::make_shared<llava::TokenTable>();
  for (const char* piece : {"{", "\"", ""}) table->push_back(piece);
  const std::string letters = "etaoinshrdlucmfwypvbgkjqxz ETAOINSHRDLU0123456789";
  const std::string marks = "{}[]\":,.\\-";
  while (table->size() < row.size() - 2) {
    std::string piece;
    const size_t length = 1 + g() % 7;
    for (size_t i = 0; i < length; ++i)
      piece += g() % 20 == 0 ? marks[g() % marks.size()] : letters[g() % letters.size()];
    table->push_back(piece);
  }
  table->push_back("a");  // 32062, 32063: the schema's key
  table->push_back(":");
  nlohmann::json words = nlohmann::json::array();
  for (int i = 0; i < 64; ++i)
    words.push_back(std::string(1, letters[static_cast<size_t>(i) % 26]) + "or" +
                    letters[static_cast<size_t>(i) / 2]);
  const auto schema = llava::JsonSchema::compile(
      {{"type", "object"}, {"properties", {{"a", {{"enum", words}}}}}, {"required", {"a"}}});
  struct Case {
    const char* name;
    double temperature, top_p, repetition_penalty;
    int top_k;
    const std::vector<float>* row;
    bool json = false;
  };
  const Case cases[] = {
      {"temperature 0.7", 0.7, 1.0, 1.0, 0, &row},
      {"temperature 0.7, top_p 0.9", 0.7, 0.9, 1.0, 0, &row},
      {"temperature 1, top_k 50", 1.0, 1.0, 1.0, 50, &row},
      {"top_p 0.9, repetition_penalty 1.1, 4,096 ids", 0.7, 0.9, 1.1, 0, &row},
      {"flat row, temperature 0.7", 0.7, 1.0, 1.0, 0, &flat},
      {"flat row, temperature 0.7, top_p 0.9", 0.7, 0.9, 1.0, 0, &flat},
      {"flat row, temperature 1.5, top_p 0.95", 1.5, 0.95, 1.0, 0, &flat},
      {"JSON mode in a string, temperature 0.7", 0.7, 1.0, 1.0, 0, &row, true},
      {"JSON mode after a key, temperature 0.7", 0.7, 1.0, 1.0, 0, &row, true},
      {"JSON schema in an enum's string, temperature 0.7", 0.7, 1.0, 1.0, 0, &row, true}};
  std::string json =
      "{\"vocabulary\":32064,\"draws\":" + std::to_string(draws) + ",\"us_per_draw\":{";
  std::printf("%-46s %12s\n", "settings", "us / draw");
  bool first = true;
  for (const Case& c : cases) {
    llava::SamplingParams p;
    p.temperature = c.temperature;
    p.top_p = c.top_p;
    p.top_k = c.top_k;
    p.repetition_penalty = c.repetition_penalty;
    p.seed = 3;
    p.json_object = c.json;
    p.json_tokens = table;
    const bool in_enum = std::strstr(c.name, "enum") != nullptr;
    if (in_enum) p.json_grammar = schema;
    p.stop_token_ids = {2};
    llava::Sampler sampler(p);
    // JSON mode's answer so far (each draw from there): '{' and '"', a key's string open; or
    // '{', '"', '"', where only a colon may come.
    const bool after_key = std::strstr(c.name, "after a key") != nullptr;
    std::vector<int32_t> grown = !c.json     ? history
                                 : after_key ? std::vector<int32_t>{0, 1, 1}
                                 : in_enum   ? std::vector<int32_t>{0, 1, 32062, 1, 32063, 1}
                                             : std::vector<int32_t>{0, 1};
    const auto start = std::chrono::steady_clock::now();
    long checksum = 0;
    for (int i = 0; i < draws; ++i) {
      const int32_t token = sampler.next(
          *c.row, c.repetition_penalty != 1.0 || c.json ? grown : std::vector<int32_t>{});
      if (c.repetition_penalty != 1.0) grown.push_back(token);
      checksum += token;
    }
    const double us =
        1e6 * std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() /
        draws;
    std::printf("%-46s %12.1f   (checksum %ld)\n", c.name, us, checksum);
    json += std::string(first ? "" : ",") + "\"" + c.name + "\":" + std::to_string(us);
    first = false;
  }
  // A JSON-mode answer's constraint, made once per request (the per-token flags of the
  // vocabulary with it).
  const auto made = std::chrono::steady_clock::now();
  constexpr int kMade = 50;
  for (int i = 0; i < kMade; ++i) llava::JsonConstraint constraint(table, {2});
  const double made_us =
      1e6 * std::chrono::duration<double>(std::chrono::steady_clock::now() - made).count() / kMade;
  std::printf("%-46s %12.1f\n", "JSON constraint made (a request's)", made_us);
  json += ",\"JSON constraint made\":" + std::to_string(made_us);
  std::printf("%s}}\n", json.c_str());
  return 0;
}
