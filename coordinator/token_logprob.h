// A generated token's log-probability as a request's answer carries it (the API's
// logprobs): its text and those of the most likely tokens at its place.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace llava {

// The log-softmax of the model's scores at the token's place (before the repetition
// penalty, temperature and the top-k/top-p/min-p cuts), and the `logprobs` most likely
// tokens there, best first; each with its text (Tokenizer::token_text: the bytes it adds,
// possibly part of a character).
struct TokenLogprob {
  struct Alternative {
    int32_t id = -1;
    std::string text;
    float logprob = 0;
  };
  int32_t id = -1;
  std::string text;
  float logprob = 0;  // NaN: none (a prompt's first token: nothing comes before it)
  std::vector<Alternative> top;
  bool in_text = true;  // false: a special token ("</s>"), which the text never shows
};

}  // namespace llava
