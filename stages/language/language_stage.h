// The language stage behind the worker's Stage interface: LanguageTasks are admitted into
// the generator while it has free KV cache slots (prefill, first token), and each work
// step decodes one token for every running request, streamed as TokenChunks, then Done.
#pragma once

#include <chrono>
#include <deque>
#include <map>
#include <memory>

#include "common/json_schema.h"
#include "common/token_table.h"
#include "stages/checkpoint/checkpoint.h"
#include "stages/language/generator.h"
#include "stages/language/llama_decoder.h"
#include "stages/stage.h"

namespace llava {

class LanguageStage final : public Stage {
 public:
  LanguageStage(const StageContext& context, StageSink& sink);

  void load() override;
  void unload() override;
  void offload() override;
  void take(wire::Incoming task) override;
  bool has_work() const override { return !queue_.empty() || !running_.empty(); }
  void work_step() override;  // admit queued tasks, then one decode step
  void cancel(uint64_t request) override;
  void drop_all(const std::optional<std::string>& reason) override;
  SlotUse slots() const override;

 private:
  using Clock = std::chrono::steady_clock;

  struct Running {  // a request inside the generator
    uint32_t attempt;
    uint32_t first_index;  // index in the answer of this attempt's first token
    uint32_t prompt_tokens;
    uint32_t generated = 0;
    Clock::time_point started;
    double prefill_seconds = 0;
  };

  // Prefill and the first token; throws RequestError for the request's own faults.
  void admit(wire::Incoming& task);
  void emit(const TokenEvent& event);  // a TokenChunk, and Done when it is the last
  // A JSON-mode task's token table (RequestError where it has none or a broken one).
  std::shared_ptr<const TokenTable> json_tokens(schema::LanguageTask::Reader task);
  // A task's response schema, compiled (the last one kept); RequestError where it does not
  // compile.
  std::shared_ptr<const JsonSchema> json_grammar(const std::string& text);

  const StageContext context_;
  StageSink& sink_;
  std::unique_ptr<Checkpoint> checkpoint_;  // open from load to unload
  std::unique_ptr<LlamaDecoder> decoder_;
  std::unique_ptr<Generator> generator_;
  std::unique_ptr<WeightOffload> offload_;  // release: offload's host copy, from the first offload
  WeightOffload::Visit weights();
  void make_generator();  // the KV cache and decode step over decoder_, from the section's sizes
  std::deque<wire::Incoming> queue_;  // tasks not admitted yet
  std::map<uint64_t, Running> running_;
  int decode_steps_ = 0;  // this process's, for the fault hooks
  std::shared_ptr<const TokenTable> json_tokens_;  // the last JSON-mode task's
  std::string json_schema_text_;                   // the last schema compiled, and it
  std::shared_ptr<const JsonSchema> json_grammar_;
};

}  // namespace llava
