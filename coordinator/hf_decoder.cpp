// The decoders read and run step by step as decoders/*.rs do.
#include "coordinator/hf_decoder.h"

#include <cctype>

#include "coordinator/hf_pre_tokenizer.h"
#include "coordinator/hf_text.h"

namespace llava::hf {

int byte_token(const std::string& token) {
  const bool byte = token.size() == 6 && starts_with(token, "<0x") && token[5] == '>' &&
                    std::isxdigit(static_cast<unsigned char>(token[3])) &&
                    std::isxdigit(static_cast<unsigned char>(token[4]));
  return byte ? std::stoi(token.substr(3, 2), nullptr, 16) : -1;
}

namespace {

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
    if (const int byte = byte_token(token); byte >= 0) {
      bytes += static_cast<char>(byte);
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

}  // namespace

void read_decoder(const JsonReader& r, const Json& node, const std::string& path,
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

}  // namespace llava::hf
