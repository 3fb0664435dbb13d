// The messages the coordinator sends its workers, built in one place: the tasks (a vision
// task's image files; a language task's prompt, streamed tokens, sampling and embeddings),
// the lease's grant and release, and the small control messages.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/wire.h"

namespace llava {

struct Request;  // request_table.h: the worker pool builds lease messages and knows no request

// The request's image files, one u8 frame each. followedBy is set when its burst goes out.
std::unique_ptr<wire::Outgoing> vision_task(const Request& request);
// Prompt + the tokens already streamed (a resumed request continues from them), the
// request's sampling with the model's end-of-sequence ids, and its embedding frames. A JSON
// task carries the token table only `with_table` (a worker keeps the one it was sent).
std::unique_ptr<wire::Outgoing> language_task(const Request& request,
                                              std::vector<wire::Frame> embeddings,
                                              const std::vector<int64_t>& eos_token_ids,
                                              bool with_table = true);
std::unique_ptr<wire::Outgoing> lease_grant(const std::string& device, uint64_t memory_limit,
                                            uint64_t epoch);
std::unique_ptr<wire::Outgoing> lease_release(Release how, uint64_t epoch);
// Whether a release this way ends the worker's process (exit; also an unresolved auto,
// which goes out as exit): its end is then expected, not a death.
inline bool release_exits(Release how) {
  return how != Release::kUnload && how != Release::kOffload;
}
// The worker drops the request and frees what it holds for it.
std::unique_ptr<wire::Outgoing> cancel_task(const Request& request);
std::unique_ptr<wire::Outgoing> heartbeat_message();
std::unique_ptr<wire::Outgoing> shutdown_message(const std::string& reason);
// To a worker that is not (or no longer) registered: it registers again.
std::unique_ptr<wire::Outgoing> not_registered_message();
std::unique_ptr<wire::Outgoing> refused_message(const std::string& why);

}  // namespace llava
