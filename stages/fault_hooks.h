// Fault injection for the multi-process tests (tests/pipeline): a slow worker, a sticky
// device error, an out-of-memory, a message at a time, a forced token, shared memory
// unreadable or misdeclared, preprocessing that throws. Every hook is off
// unless its environment variable is set; they are read once, when first asked for.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace llava {

// LLAVA_PIPE_FAULT_ONCE=PATH makes the error hooks fire only while PATH exists (the worker
// deletes it when one fires), so that a restarted worker runs clean.
struct FaultHooks {
  int work_delay_ms = number("LLAVA_PIPE_FAULT_WORK_DELAY_MS");            // each work step slower
  int sticky_after_steps = number("LLAVA_PIPE_FAULT_STICKY_AFTER_STEPS");  // then a sticky error
  int oom_prompt_tokens = number("LLAVA_PIPE_FAULT_OOM_PROMPT_TOKENS");    // prompts this long OOM
  int oom_at_load = number("LLAVA_PIPE_FAULT_OOM_AT_LOAD");                // loading OOMs
  // Messages taken one at a time, as if each arrived just after the worker started working.
  int one_message_per_step = number("LLAVA_PIPE_FAULT_ONE_MESSAGE_PER_STEP");
  // "ID:N": a first attempt's token number N is reported as ID (as if sampled), e.g. the
  // image token, to test what a resumed request does with it.
  int forced_token = pair("LLAVA_PIPE_FAULT_FORCE_TOKEN", 0);
  int forced_index = pair("LLAVA_PIPE_FAULT_FORCE_TOKEN", 1);
  // A language worker cannot read the coordinator's shared memory (as if its /dev/shm were
  // another); a vision worker declares its embeddings this many bytes past where it wrote
  // them (a peer that lies about its range).
  int shared_unreadable = number("LLAVA_PIPE_FAULT_SHARED_UNREADABLE");
  int shared_offset_lie = number("LLAVA_PIPE_FAULT_SHARED_OFFSET_LIE");
  // A vision worker's decoding + preprocessing of an image throws what is not the image's
  // fault (as out of host memory would).
  int preprocess_throws = number("LLAVA_PIPE_FAULT_PREPROCESS_THROWS");

  static int pair(const char* name, int part) {
    const char* value = std::getenv(name);
    if (!value || !std::strchr(value, ':')) return -1;
    return std::atoi(part == 0 ? value : std::strchr(value, ':') + 1);
  }
  static int number(const char* name) {
    const char* value = std::getenv(name);
    return value ? std::atoi(value) : 0;
  }
  static bool armed() {
    const char* once = std::getenv("LLAVA_PIPE_FAULT_ONCE");
    if (!once) return true;
    return std::remove(once) == 0;  // fires once: the first to delete the file
  }
};

inline const FaultHooks& faults() {
  static const FaultHooks hooks;
  return hooks;
}

}  // namespace llava
