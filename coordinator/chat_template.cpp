// Chat template and image placeholder expansion.
#include "coordinator/chat_template.h"

#include "common/errors.h"

namespace llava {
namespace {

void replace_all(std::string& text, const std::string& from, const std::string& to) {
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) {
    text.replace(at, from.size(), to);
  }
}

}  // namespace

std::string apply_chat_template(const std::string& chat_template, const std::string& prompt,
                                int images, const std::string& image_token) {
  int placed = 0;
  for (size_t at = prompt.find(image_token); at != std::string::npos;
       at = prompt.find(image_token, at + image_token.size())) {
    ++placed;
  }
  if (placed > 0 && placed != images) {
    throw RequestError("the prompt has " + std::to_string(placed) + " " + image_token +
                       " placeholder" + (placed == 1 ? "" : "s") + " for " +
                       std::to_string(images) + " image" + (images == 1 ? "" : "s") +
                       ": give one per image, where each goes, or none (the images then go "
                       "before the prompt)");
  }
  std::string placeholders;
  for (int i = 0; i < images && placed == 0; ++i) placeholders += image_token + "\n";
  std::string text = chat_template;
  if (text.find("{images}") == std::string::npos) {
    replace_all(text, "{prompt}", placeholders + "{prompt}");
  } else {
    replace_all(text, "{images}", placeholders);
  }
  // The prompt goes in last, so that braces in the user's text are left alone.
  const size_t at = text.find("{prompt}");
  if (at != std::string::npos) text.replace(at, 8, prompt);
  return text;
}

std::vector<int32_t> expand_image_tokens(const std::vector<int32_t>& ids, int32_t image_token,
                                         int64_t per_image) {
  std::vector<int32_t> out;
  out.reserve(ids.size());
  for (int32_t id : ids) {
    if (id == image_token) {
      out.insert(out.end(), static_cast<size_t>(per_image), image_token);
    } else {
      out.push_back(id);
    }
  }
  return out;
}

}  // namespace llava
