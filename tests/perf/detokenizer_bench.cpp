// The coordinator's host time for one streamed token: an answer of N tokens of mixed text
// (ASCII, accents, CJK: byte-fallback runs) pushed through the Detokenizer a token at a
// time, with each tokenizer folder given; and the once-per-coordinator token table of JSON
// mode (every token's bytes). Prints a table and one JSON line.
//   detokenizer_bench [--tokens N] FOLDER...
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "coordinator/tokenizer.h"

int main(int argc, char** argv) {
  size_t tokens = 4096;
  std::vector<std::string> folders;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--tokens") == 0 && i + 1 < argc) {
      tokens = static_cast<size_t>(std::max(1, std::atoi(argv[++i])));
    } else {
      folders.emplace_back(argv[i]);
    }
  }
  std::string json = "{\"tokens\":" + std::to_string(tokens) + ",\"us_per_token\":{";
  std::string tables;
  std::printf("%-60s %8s %12s %14s\n", "tokenizer", "tokens", "us / token", "table ms");
  for (size_t f = 0; f < folders.size(); ++f) {
    const llava::Tokenizer tokenizer(folders[f]);
    std::string text;
    for (int i = 0; text.size() < 64 * tokens; ++i) {
      text += "The quick brown fox jumps over the lazy dog, café ünïcode 漢字 " +
              std::to_string(i) + ".\n";
    }
    std::vector<int32_t> ids = tokenizer.encode(text, false);
    if (ids.size() > tokens) ids.resize(tokens);
    const auto start = std::chrono::steady_clock::now();
    llava::Detokenizer stream(tokenizer);
    std::string joined;
    for (int32_t id : ids) joined += stream.push(id);
    joined += stream.finish();
    const double us =
        1e6 * std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() /
        static_cast<double>(ids.size());
    if (joined != tokenizer.decode(ids)) {
      std::fprintf(stderr, "%s: the stream differs from the whole decode\n", folders[f].c_str());
      return 1;
    }
    const auto table_start = std::chrono::steady_clock::now();
    const llava::TokenTable table = llava::token_table(tokenizer);
    const double table_ms =
        1e3 * std::chrono::duration<double>(std::chrono::steady_clock::now() - table_start).count();
    std::printf("%-60s %8zu %12.2f %8.1f (%zu)\n", folders[f].c_str(), ids.size(), us, table_ms,
                table.size());
    json += std::string(f ? "," : "") + "\"" + folders[f] + "\":" + std::to_string(us);
    tables += std::string(f ? "," : "") + "\"" + folders[f] + "\":" + std::to_string(table_ms);
  }
  std::printf("%s},\"token_table_ms\":{%s}}\n", json.c_str(), tables.c_str());
  return 0;
}
