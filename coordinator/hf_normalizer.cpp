// The normalizer's steps read and run as normalizers/prepend.rs and replace.rs do.
#include "coordinator/hf_normalizer.h"

#include "coordinator/hf_text.h"

namespace llava::hf {

void read_normalizer(const JsonReader& r, const Json& node, const std::string& path,
                     std::vector<NormalizerStep>& steps) {
  if (node.is_null()) return;
  const std::string type = r.type(node, path);
  if (type == "Sequence") {
    const Json& list = r.at(node, path, "normalizers");
    for (size_t i = 0; i < list.size(); ++i) {
      read_normalizer(r, list[i], path + ".normalizers[" + std::to_string(i) + "]", steps);
    }
  } else if (type == "Prepend") {
    steps.push_back({NormalizerStep::kPrepend, r.string(node, path, "prepend"), ""});
  } else if (type == "Replace") {
    steps.push_back(
        {NormalizerStep::kReplace, r.pattern(node, path), r.string(node, path, "content")});
  } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
    r.fail(path, "the " + type +
                     " normalizer needs Unicode normalization tables, which the "
                     "coordinator does not carry; unsupported");
  } else {
    r.unsupported(path, node);
  }
}

std::string normalize(const std::vector<NormalizerStep>& steps, std::string text) {
  for (const auto& step : steps) {
    if (step.kind == NormalizerStep::kPrepend) {
      if (!text.empty()) text.insert(0, step.a);  // normalizers/prepend.rs: not on empty text
    } else {
      replace_all(text, step.a, step.b);
    }
  }
  return text;
}

}  // namespace llava::hf
