// The language stage's work: admit LanguageTasks into the generator (embedding frames
// spliced into the prompt, resumed attempts continuing their answer), step it, and stream
// each token back as a TokenChunk, with Done at the end of a request.
#include "stages/language/language_stage.h"

#include <c10/util/Exception.h>

#include <string>
#include <vector>

#include "common/errors.h"
#include "common/json_depth.h"
#include "common/json_schema.h"
#include "common/plan.h"
#include "common/sampling.h"
#include "stages/device.h"
#include "stages/fault_hooks.h"

namespace llava {
namespace {

constexpr size_t kEmbeddingFrameRank = 2;  // [tokens, hidden]

at::ScalarType from_wire(wire::DType dtype) {
  return dtype == wire::DType::kF16    ? at::kHalf
         : dtype == wire::DType::kBF16 ? at::kBFloat16
                                       : at::kFloat;
}

schema::FinishReason finish_reason(Finish finish) {
  switch (finish) {
    case Finish::kStop:
      return schema::FinishReason::EOS;
    case Finish::kCancelled:
      return schema::FinishReason::CANCELLED;
    default:
      return schema::FinishReason::LENGTH;
  }
}

void to_wire(const TokenLogprobs& logprobs, schema::TokenLogprobs::Builder out) {
  out.setLogprob(logprobs.logprob);
  const auto& ids = logprobs.top_ids;
  auto top_ids = out.initTopIds(static_cast<unsigned>(ids.size()));
  auto top_logprobs = out.initTopLogprobs(static_cast<unsigned>(ids.size()));
  for (unsigned j = 0; j < ids.size(); ++j) {
    top_ids.set(j, ids[j]);
    top_logprobs.set(j, logprobs.top_logprobs[j]);
  }
}

}  // namespace

LanguageStage::LanguageStage(const StageContext& context, StageSink& sink)
    : context_(context), sink_(sink) {}

WeightOffload::Visit LanguageStage::weights() {
  return [this](const std::function<void(at::Tensor&)>& f) { decoder_->visit_tensors(f); };
}

void LanguageStage::load() {
  const PipelineConfig& config = context_.config;
  if (offload_ && offload_->offloaded()) {  // the weights wait in host memory
    restore_weights(*offload_, weights(), context_);
    make_generator();
    return;
  }
  checkpoint_ = std::make_unique<Checkpoint>(config.model.checkpoint);
  checkpoint_->on_tensor_loaded([this] { sink_.heartbeat_if_due(); });
  const LanguageLayout layout = language_layout(config, context_.model);
  decoder_ = std::make_unique<LlamaDecoder>(
      context_.model, *checkpoint_, context_.tensor_options,
      WeightPlacement{config.language.quantize, layout.embeddings_on_host, layout.resident_layers});
  // Loading's temporaries (float16 parts, float32 copies for quantizing) leave cached
  // blocks of odd sizes; give them back before the KV cache takes its share.
  release_cached_memory(context_.tensor_options.device());
  make_generator();
  checkpoint_->release_staging();
}

void LanguageStage::make_generator() {
  generator_ = std::make_unique<Generator>(*decoder_, context_.section.batch_size,
                                           context_tokens(context_.config, context_.model),
                                           context_.section.prefill_chunk, context_.section.cuda_graphs);
}

void LanguageStage::unload() {
  generator_.reset();
  decoder_.reset();
  checkpoint_.reset();
  offload_.reset();
}

void LanguageStage::offload() {
  generator_.reset();  // the KV cache and the decode step's graphs (they read the old addresses)
  if (!offload_) offload_ = std::make_unique<WeightOffload>();
  offload_weights(*offload_, weights(), context_);
}

SlotUse LanguageStage::slots() const {
  if (!generator_) return {};
  return {static_cast<uint32_t>(generator_->active()), static_cast<uint32_t>(generator_->slots())};
}

void LanguageStage::take(wire::Incoming task) {
  if (task.kind() != schema::Header::Body::Which::LANGUAGE_TASK) {
    throw WireError(std::string("a ") + wire::kind_name(task.kind()) + " for a language worker");
  }
  // A JSON task's token table is kept as it arrives, not when the task is admitted: the
  // coordinator sends it once to this process, and the task that carried it may be
  // cancelled before its turn. A table that does not read fails its task at admission.
  auto body = task.header().getBody().getLanguageTask();
  if (body.getSampling().getJsonObject() && body.getTokenEnds().size() > 0) {
    try {
      json_tokens(body);
    } catch (const RequestError&) {
    }
  }
  queue_.push_back(std::move(task));
}

void LanguageStage::cancel(uint64_t request) {
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (it->request_id() == request) {
      queue_.erase(it);
      return;
    }
  }
  if (generator_ && generator_->cancel(request)) running_.erase(request);
}

void LanguageStage::drop_all(const std::optional<std::string>& reason) {
  if (reason) {
    for (auto& task : queue_) {
      sink_.fail(task.request_id(), task.attempt(), *reason, FailureKind::kRetryable);
    }
    for (auto& [id, run] : running_) sink_.fail(id, run.attempt, *reason, FailureKind::kRetryable);
  }
  queue_.clear();
  if (generator_) {
    for (const auto& [id, run] : running_) generator_->cancel(id);
  }
  running_.clear();
}

std::shared_ptr<const TokenTable> LanguageStage::json_tokens(schema::LanguageTask::Reader task) {
  if (task.getTokenEnds().size() == 0) {  // the coordinator sent it with an earlier task
    if (!json_tokens_) throw RequestError("JSON mode: no token table has reached this worker");
    return json_tokens_;
  }
  TokenTable table = token_table_from_wire(task);
  if (table.size() == 0) throw RequestError("JSON mode: the task carries no token table");
  // The same table each time (the coordinator's tokenizer's): kept once.
  if (!json_tokens_ || json_tokens_->bytes != table.bytes || json_tokens_->ends != table.ends) {
    json_tokens_ = std::make_shared<const TokenTable>(std::move(table));
  }
  return json_tokens_;
}

std::shared_ptr<const JsonSchema> LanguageStage::json_grammar(const std::string& text) {
  if (text.empty()) return JsonSchema::any_object();
  // The coordinator checked it; a peer's that does not compile fails its request only.
  if (text != json_schema_text_) {
    try {
      json_grammar_ = JsonSchema::compile(parse_json(text));
    } catch (const JsonSchemaError& e) {
      throw RequestError(e.what());
    } catch (const nlohmann::json::exception& e) {
      throw RequestError(std::string("json_schema: not JSON (") + e.what() + ")");
    }
    json_schema_text_ = text;  // the last request's, kept: n choices and batches repeat it
  }
  return json_grammar_;
}

void LanguageStage::admit(wire::Incoming& task) {
  auto body = task.header().getBody().getLanguageTask();
  std::vector<int32_t> ids;
  for (int32_t id : body.getTokenIds()) ids.push_back(id);
  std::vector<at::Tensor> images;
  for (auto& frame : task.frames()) {
    if (frame.dtype == wire::DType::kU8 || frame.shape.size() != kEmbeddingFrameRank) {
      throw RequestError("embedding frames must be [tokens, hidden] floats");
    }
    images.push_back(at::from_blob(frame.bytes.data(), frame.shape, from_wire(frame.dtype)));
  }
  SamplingParams params = from_wire(body.getSampling());
  if (params.json_object) {
    params.json_tokens = json_tokens(body);
    params.json_grammar = json_grammar(params.json_schema);
  }
  if (faults().oom_prompt_tokens > 0 &&
      static_cast<int>(ids.size()) >= faults().oom_prompt_tokens && FaultHooks::armed()) {
    TORCH_CHECK(false,
                "CUDA out of memory. Tried to allocate 20.00 MiB. (injected by "
                "LLAVA_PIPE_FAULT_OOM_PROMPT_TOKENS)");
  }
  // Tokens an earlier attempt generated continue the prompt; only the prompt's own image
  // tokens are placeholders (a generated id equal to the image token is text).
  if (body.getResumeFrom() > ids.size()) {
    throw RequestError("resumes from token " + std::to_string(body.getResumeFrom()) +
                       " of a prompt of " + std::to_string(ids.size()));
  }
  const size_t placeholders_end = ids.size() - body.getResumeFrom();
  Running run{task.attempt(), body.getResumeFrom(), static_cast<uint32_t>(ids.size()), 0,
              Clock::now()};
  TokenEvent first = generator_->start(task.request_id(), ids, images, params, placeholders_end,
                                       body.getImageKey());
  run.prefill_seconds = seconds(Clock::now() - run.started);
  running_[task.request_id()] = run;
  emit(first);
}

void LanguageStage::emit(const TokenEvent& event) {
  Running& run = running_.at(event.id);
  wire::Outgoing chunk(event.id, run.attempt);
  auto body = chunk.header().getBody().initTokenChunk();
  int32_t token = event.token;
  if (faults().forced_token >= 0 && run.attempt == 0 &&
      static_cast<int>(run.first_index + run.generated) == faults().forced_index) {
    token = faults().forced_token;
  }
  body.initTokenIds(1).set(0, token);
  body.setFirstIndex(run.first_index + run.generated);
  if (event.logprobs) to_wire(*event.logprobs, body.initLogprobs(1)[0]);
  if (!event.prompt_logprobs.empty()) {
    auto list = body.initPromptLogprobs(static_cast<unsigned>(event.prompt_logprobs.size()));
    for (unsigned i = 0; i < list.size(); ++i) to_wire(event.prompt_logprobs[i], list[i]);
  }
  ++run.generated;
  sink_.send(chunk);
  if (event.finish == Finish::kNone) return;
  wire::Outgoing done(event.id, run.attempt);
  auto d = done.header().getBody().initDone();
  d.setReason(finish_reason(event.finish));
  d.setPromptTokens(run.prompt_tokens);
  d.setGeneratedTokens(run.first_index + run.generated);
  d.setPrefillSeconds(run.prefill_seconds);
  d.setDecodeSeconds(seconds(Clock::now() - run.started) - run.prefill_seconds);
  sink_.send(done);
  running_.erase(event.id);
}

void LanguageStage::work_step() {
  while (!queue_.empty() && generator_->has_capacity()) {
    wire::Incoming task = std::move(queue_.front());
    queue_.pop_front();
    try {
      admit(task);
    } catch (const RequestError& e) {
      running_.erase(task.request_id());
      sink_.fail(task.request_id(), task.attempt(), e.what(), FailureKind::kBadRequest);
    } catch (const c10::Error& e) {  // out of memory and the like: this request only
      if (is_sticky(e)) exit_after_sticky_error(e);
      running_.erase(task.request_id());
      sink_.fail(
          task.request_id(), task.attempt(),
          "language model: " + one_line_error(e, context_, "prefilling this request's prompt"),
          FailureKind::kFinal);
    }
  }
  if (generator_->active() == 0) return;
  std::vector<TokenEvent> events;
  try {
    if (faults().sticky_after_steps > 0 && ++decode_steps_ == faults().sticky_after_steps &&
        FaultHooks::armed()) {
      TORCH_CHECK(false, "CUDA error: an illegal memory access was encountered (injected)");
    }
    events = generator_->step();
  } catch (const std::exception& e) {
    if (is_sticky(e)) exit_after_sticky_error(e);
    // The batch cannot go on; each request is retried from what it has streamed.
    for (auto& [id, run] : running_) {
      generator_->cancel(id);
      sink_.fail(id, run.attempt,
                 "decode step failed: " + one_line_error(e, context_, "in a decode step"),
                 FailureKind::kRetryable);
    }
    running_.clear();
    return;
  }
  for (const auto& event : events) emit(event);
}

}  // namespace llava
