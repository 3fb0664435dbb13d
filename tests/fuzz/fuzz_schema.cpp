// libFuzzer target: structured output's schema compiler and recognizer (common/json_schema.h).
// The input is a schema's JSON text, a NUL byte, then bytes an answer would feed: any schema
// either compiles or is refused with JsonSchemaError (a parse error before that), the
// recognizer takes or refuses every byte without crashing, and a text it completes parses
// as JSON (numbers past double's range aside: JSON has none, nlohmann refuses them).
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

#include "common/json_depth.h"
#include "common/json_schema.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t split = input.find('\0');
  const std::string_view schema_text = input.substr(0, split);
  const std::string_view answer =
      split == std::string_view::npos ? std::string_view() : input.substr(split + 1);
  std::shared_ptr<const llava::JsonSchema> schema;
  try {
    schema = llava::JsonSchema::compile(llava::with_property_order(schema_text, {}));
  } catch (const llava::JsonSchemaError&) {
    return 0;
  } catch (const nlohmann::json::exception&) {
    return 0;
  }
  for (const auto& s : {schema, llava::JsonSchema::any_object()}) {
    llava::SchemaState state(s.get());
    std::string text;
    for (char c : answer) {
      llava::SchemaState next = state;
      if (!next.feed(static_cast<unsigned char>(c))) continue;  // refused: the mask leaves it out
      state = next;
      text += c;
      if (state.complete()) break;
    }
    if (!state.complete()) continue;
    try {
      nlohmann::json::parse(text);
    } catch (const nlohmann::json::out_of_range&) {
      // JSON all the same: a number past double's range ("0e66666"), which nlohmann refuses.
    } catch (const nlohmann::json::exception&) {
      __builtin_trap();
    }
  }
  return 0;
}
