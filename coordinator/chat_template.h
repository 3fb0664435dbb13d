// The prompt a request becomes: the chat template around the user's text (the config's
// "{images}{prompt}" form, or a checkpoint's Jinja template over a whole conversation), then
// each image placeholder expanded to the number of embeddings one image gives.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
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

// One turn of a conversation, as chat templates see it: parts in order, images where they are.
struct ChatTurnPart {
  bool image = false;
  std::string text;
};
struct ChatTurn {
  std::string role;                // system, user, assistant, tool
  bool content_is_string = false;  // written as one string (one text part)
  std::vector<ChatTurnPart> parts;
  nlohmann::json tool_calls;  // an assistant's calls, OpenAI's form (null: none)
  std::string tool_call_id;   // a tool turn's: the call it answers
};

class JinjaTemplate;

// The chat template a server applies to conversations: the checkpoint's Jinja template
// (chat_template.jinja, chat_template.json or tokenizer_config.json's "chat_template") where
// it has one, else the config's "{images}{prompt}" form, turn by turn. A Jinja template
// outside the supported subset is refused here, at load, with ConfigError.
class ChatTemplate {
 public:
  ChatTemplate(const std::string& checkpoint_folder, const std::string& config_template,
               std::string bos_token = "<s>", std::string eos_token = "</s>");
  ~ChatTemplate();
  // The prompt text, with one "<image>" per image part where the template puts it and no
  // leading BOS (the tokenizer adds it). Throws RequestError (raise_exception, a role the
  // template refuses). A Jinja template sees what transformers' apply_chat_template gives it:
  // `tools` (the request's, where it has some), each message's `tool_calls` and
  // `tool_call_id`; it decides what of them the prompt shows (LLaVA-1.5's shows a tool turn as
  // "TOOL: ..." and nothing of an assistant's calls). The config's form shows a tool turn as
  // a user turn and an assistant's calls as their JSON ([{"name", "arguments"}]).
  std::string render(const std::vector<ChatTurn>& turns, bool add_generation_prompt = true,
                     const nlohmann::json& tools = nullptr) const;
  // "checkpoint chat_template.json", "the config's generation.chat_template", ...
  const std::string& origin() const { return origin_; }

 private:
  std::shared_ptr<const JinjaTemplate> jinja_;
  bool content_as_parts_ = true;    // the template walks content parts (else: one string)
  bool string_content_ok_ = false;  // it also takes content written as a string
  std::string simple_;              // the config's form, when no Jinja template
  std::string origin_;
  std::string bos_, eos_;
};

// The checkpoint folder's Jinja chat template and the file it came from; "" when it has none.
// Throws ConfigError for a file that cannot be read or parsed.
std::string checkpoint_chat_template(const std::string& folder, std::string* origin = nullptr);

}  // namespace llava
