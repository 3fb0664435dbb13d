// The prompt a request becomes: the chat template around the user's text, then each
// image placeholder expanded to the number of embeddings one image gives.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace llava {

// "USER: {images}{prompt} ASSISTANT:" with {images} = "<image>\n" per image. When the
// template has no {images}, the placeholders go in front of the prompt. A prompt that has
// its own placeholders, one per image, places the images itself ({images} becomes empty),
// as transformers' LLaVA prompts do; any other count of them throws RequestError.
std::string apply_chat_template(const std::string& chat_template, const std::string& prompt,
                                int images, const std::string& image_token = "<image>");

// Each image token becomes `per_image` copies (576 for LLaVA-1.5).
std::vector<int32_t> expand_image_tokens(const std::vector<int32_t>& ids, int32_t image_token,
                                         int64_t per_image);

}  // namespace llava
