// Builders of the coordinator's messages to its workers.
#include "coordinator/tasks.h"

#include <algorithm>

#include "common/sampling.h"
#include "coordinator/request_table.h"

namespace llava {

std::unique_ptr<wire::Outgoing> vision_task(const Request& request) {
  auto message = std::make_unique<wire::Outgoing>(request.id, request.attempt);
  message->header().getBody().initVisionTask().setImageCount(
      static_cast<uint32_t>(request.images.size()));
  for (const auto& image : request.images) {
    message->add_frame(wire::DType::kU8, {static_cast<int64_t>(image.size())},
                       zmq::message_t(image.data(), image.size()));
  }
  return message;
}

std::unique_ptr<wire::Outgoing> language_task(const Request& request,
                                              std::vector<wire::Frame> embeddings,
                                              const std::vector<int64_t>& eos_token_ids,
                                              bool with_table) {
  auto message = std::make_unique<wire::Outgoing>(request.id, request.attempt);
  auto task = message->header().getBody().initLanguageTask();
  std::vector<int32_t> ids = request.prompt;
  ids.insert(ids.end(), request.tokens.begin(), request.tokens.end());
  auto list = task.initTokenIds(static_cast<unsigned>(ids.size()));
  for (size_t i = 0; i < ids.size(); ++i) list.set(static_cast<unsigned>(i), ids[i]);
  task.setResumeFrom(static_cast<uint32_t>(request.tokens.size()));
  // The images' content hashes (the embedding cache's), folded: FNV-1a over them.
  uint64_t image_key = 0;
  if (!request.image_hashes.empty()) {
    image_key = 1469598103934665603ull;
    for (size_t hash : request.image_hashes) image_key = (image_key ^ hash) * 1099511628211ull;
    image_key |= 1;  // never 0, which means no images
  }
  task.setImageKey(image_key);
  SamplingParams sampling = request.spec.generation;  // the request's keys
  // (at least 1: a request of none is sent for its prompt's logprobs, its token dropped)
  sampling.max_new_tokens =
      std::max(1, sampling.max_new_tokens - static_cast<int>(request.tokens.size()));
  sampling.prompt_logprobs = request.owes_prompt_logprobs();
  if (!request.spec.generation.ignore_eos) {
    for (int64_t eos : eos_token_ids) sampling.stop_token_ids.push_back(static_cast<int32_t>(eos));
  }
  to_wire(sampling, task.initSampling());
  if (sampling.json_object && sampling.json_tokens && with_table)
    to_wire(*sampling.json_tokens, task);
  for (auto& frame : embeddings) message->add_frame(std::move(frame));
  return message;
}

std::unique_ptr<wire::Outgoing> lease_grant(const std::string& device, uint64_t memory_limit,
                                            uint64_t epoch) {
  auto message = std::make_unique<wire::Outgoing>();
  auto body = message->header().getBody().initLeaseGrant();
  body.setDevice(device);
  body.setMemoryLimit(memory_limit);
  body.setEpoch(epoch);
  return message;
}

std::unique_ptr<wire::Outgoing> lease_release(Release how, uint64_t epoch) {
  auto message = std::make_unique<wire::Outgoing>();
  auto body = message->header().getBody().initLeaseRelease();
  body.setHow(release_exits(how)         ? schema::ReleaseHow::EXIT
              : how == Release::kOffload ? schema::ReleaseHow::OFFLOAD
                                         : schema::ReleaseHow::UNLOAD);
  body.setEpoch(epoch);
  return message;
}

std::unique_ptr<wire::Outgoing> cancel_task(const Request& request) {
  auto message = std::make_unique<wire::Outgoing>(request.id, request.attempt);
  message->header().getBody().initCancel();
  return message;
}

std::unique_ptr<wire::Outgoing> heartbeat_message() {
  auto message = std::make_unique<wire::Outgoing>();
  message->header().getBody().initHeartbeat();
  return message;
}

std::unique_ptr<wire::Outgoing> shutdown_message(const std::string& reason) {
  auto message = std::make_unique<wire::Outgoing>();
  message->header().getBody().initShutdown().setReason(reason);
  return message;
}

std::unique_ptr<wire::Outgoing> not_registered_message() {
  auto message = std::make_unique<wire::Outgoing>();
  message->header().getBody().initNotRegistered();
  return message;
}

std::unique_ptr<wire::Outgoing> refused_message(const std::string& why) {
  auto message = std::make_unique<wire::Outgoing>();
  message->header().getBody().initRefused().setReason(why);
  return message;
}

}  // namespace llava
