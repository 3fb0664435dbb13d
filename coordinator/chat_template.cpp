// Chat templates (the config's form, a checkpoint's Jinja) and image placeholder expansion.
#include "coordinator/chat_template.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "common/errors.h"
#include "common/json_depth.h"
#include "coordinator/jinja.h"

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

// ---- conversations ------------------------------------------------------------------

namespace llava {
namespace {

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path.string() + ": cannot read");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// tokenizer_config.json's "chat_template": a string, or a list of {"name", "template"}
// (the "default" one is used).
std::string template_field(const nlohmann::json& value, const std::string& where) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_array()) {
    for (const auto& entry : value) {
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry["template"].is_string()) {
        return entry["template"].get<std::string>();
      }
    }
  }
  throw ConfigError(where +
                    ": chat_template: expected a string (or a list with a \"default\" template)");
}

}  // namespace

std::string checkpoint_chat_template(const std::string& folder, std::string* origin) {
  namespace fs = std::filesystem;
  const fs::path dir(folder);
  auto json_file = [](const fs::path& path) {
    try {
      return parse_json(read_text(path));
    } catch (const nlohmann::json::exception& e) {
      throw ConfigError(path.string() + ": not valid JSON (" + e.what() + ")");
    }
  };
  if (fs::exists(dir / "chat_template.jinja")) {  // transformers 5 saves it so
    if (origin) *origin = (dir / "chat_template.jinja").string();
    return read_text(dir / "chat_template.jinja");
  }
  if (fs::exists(dir / "chat_template.json")) {
    const auto j = json_file(dir / "chat_template.json");
    if (origin) *origin = (dir / "chat_template.json").string();
    if (!j.is_object() || !j.contains("chat_template")) {
      throw ConfigError((dir / "chat_template.json").string() + ": no \"chat_template\" key");
    }
    return template_field(j["chat_template"], (dir / "chat_template.json").string());
  }
  if (fs::exists(dir / "tokenizer_config.json")) {
    const auto j = json_file(dir / "tokenizer_config.json");
    if (j.is_object() && j.contains("chat_template") && !j["chat_template"].is_null()) {
      if (origin) *origin = (dir / "tokenizer_config.json").string();
      return template_field(j["chat_template"], (dir / "tokenizer_config.json").string());
    }
  }
  return "";
}

ChatTemplate::ChatTemplate(const std::string& checkpoint_folder, const std::string& config_template,
                           std::string bos_token, std::string eos_token)
    : bos_(std::move(bos_token)), eos_(std::move(eos_token)) {
  // The checkpoint's own bos / eos strings, as transformers passes them to the template.
  const auto tokenizer_config = std::filesystem::path(checkpoint_folder) / "tokenizer_config.json";
  if (std::filesystem::exists(tokenizer_config)) {
    nlohmann::json j;  // not an object when it is not JSON: the defaults stay
    try {
      j = parse_json(read_text(tokenizer_config));
    } catch (const nlohmann::json::exception&) {
    }
    auto token = [&](const char* key, std::string& out) {
      if (!j.is_object() || !j.contains(key)) return;
      const auto& v = j[key];
      if (v.is_string()) out = v.get<std::string>();
      if (v.is_object() && v.contains("content") && v["content"].is_string())
        out = v["content"].get<std::string>();
    };
    token("bos_token", bos_);
    token("eos_token", eos_);
  }
  std::string origin;
  const std::string source = checkpoint_chat_template(checkpoint_folder, &origin);
  if (source.empty()) {
    simple_ = config_template;
    origin_ = "the config's generation.chat_template";
    return;
  }
  // Content as transformers' LLaVA processors give it (a list of parts) when the template
  // walks the parts; as one string (images inline as "<image>\n") when it prints it whole.
  static const std::regex kWalksParts(
      R"((\bin\s+\w+\s*(\[\s*['"]content['"]\s*\]|\.content))|((\[\s*['"]content['"]\s*\]|\.content)\s*\|))");
  content_as_parts_ = std::regex_search(source, kWalksParts);
  string_content_ok_ = source.find("is string") != std::string::npos;  // it handles both
  try {
    jinja_ = std::make_shared<JinjaTemplate>(source);
  } catch (const JinjaError& e) {
    throw ConfigError(
        origin + ": the chat template is outside the Jinja subset llava-pipe renders: " + e.what());
  }
  origin_ = origin;
}

ChatTemplate::~ChatTemplate() = default;

std::string ChatTemplate::render(const std::vector<ChatTurn>& turns, bool add_generation_prompt,
                                 const nlohmann::json& tools) const {
  const std::string image = "<image>";
  if (jinja_) {
    nlohmann::json messages = nlohmann::json::array();
    for (const auto& turn : turns) {
      nlohmann::json m = {{"role", turn.role}};
      if (!content_as_parts_) {
        std::string content;
        for (const auto& part : turn.parts) content += part.image ? image + "\n" : part.text;
        m["content"] = content;
      } else if (turn.content_is_string && turn.parts.size() == 1 && !turn.parts[0].image &&
                 string_content_ok_) {
        m["content"] = turn.parts[0].text;
      } else {
        nlohmann::json content = nlohmann::json::array();
        for (const auto& part : turn.parts) {
          content.push_back(part.image ? nlohmann::json{{"type", "image"}}
                                       : nlohmann::json{{"type", "text"}, {"text", part.text}});
        }
        m["content"] = content;
      }
      if (!turn.tool_calls.is_null()) m["tool_calls"] = turn.tool_calls;
      if (!turn.tool_call_id.empty()) m["tool_call_id"] = turn.tool_call_id;
      messages.push_back(std::move(m));
    }
    nlohmann::json context = {
        {"add_generation_prompt", add_generation_prompt}, {"bos_token", bos_}, {"eos_token", eos_}};
    context["messages"] = std::move(messages);  // (an initializer list would copy them)
    if (!tools.is_null()) context["tools"] = tools;
    std::string text = jinja_->render(std::move(context));
    if (!bos_.empty() && text.rfind(bos_, 0) == 0) text.erase(0, bos_.size());
    return text;
  }
  // The config's form, turn by turn: system text first, each user turn through the
  // template (its images where their parts are), each answer after it:
  // "USER: <image>\nq1 ASSISTANT: a1 USER: q2 ASSISTANT:".
  std::string text;
  for (size_t i = 0; i < turns.size(); ++i) {
    const ChatTurn& turn = turns[i];
    std::string content;
    int images = 0;
    for (const auto& part : turn.parts) {
      if (part.image) {
        content += image + "\n";
        ++images;
      } else {
        if (!content.empty() && content.back() != '\n') content += " ";
        content += part.text;
      }
    }
    if (!turn.tool_calls.is_null()) {  // the calls as the answer's text
      nlohmann::ordered_json calls = nlohmann::ordered_json::array();
      for (const auto& call : turn.tool_calls) {
        calls.push_back(
            {{"name", call["function"]["name"]}, {"arguments", call["function"]["arguments"]}});
      }
      if (!content.empty()) content += " ";
      content += calls.dump();
    }
    if (turn.role == "system") {
      text += content + " ";
    } else if (turn.role == "user" || turn.role == "tool") {
      const bool last = i + 1 == turns.size();
      std::string rendered = apply_chat_template(simple_, content, images, image);
      if (last && !add_generation_prompt) {
        // Without the generation prompt, the turn ends where the template's answer part starts.
        const size_t at = simple_.find("{prompt}");
        const std::string tail = at == std::string::npos ? "" : simple_.substr(at + 8);
        if (!tail.empty() && rendered.size() >= tail.size() &&
            rendered.compare(rendered.size() - tail.size(), tail.size(), tail) == 0) {
          rendered.erase(rendered.size() - tail.size());
        }
      }
      text += rendered;
    } else {
      text += " " + content + (i + 1 == turns.size() ? "" : " ");
    }
  }
  return text;
}

}  // namespace llava
