// Which of the two stages a process, a slot or a task belongs to. One name for the
// concept: the YAML section, the plan, the coordinator's slots and the worker all use it,
// and strings ("vision", "language") appear only where text meets the program (YAML keys,
// command lines, messages, process names).
#pragma once

#include <optional>
#include <string>

namespace llava {

enum class StageKind { kVision, kLanguage };

constexpr StageKind kStageKinds[] = {StageKind::kVision, StageKind::kLanguage};

inline const char* stage_name(StageKind kind) {
  return kind == StageKind::kVision ? "vision" : "language";
}

inline StageKind other_stage(StageKind kind) {
  return kind == StageKind::kVision ? StageKind::kLanguage : StageKind::kVision;
}

// "vision" / "language"; nothing for any other text.
inline std::optional<StageKind> parse_stage(const std::string& name) {
  if (name == "vision") return StageKind::kVision;
  if (name == "language") return StageKind::kLanguage;
  return std::nullopt;
}

}  // namespace llava
