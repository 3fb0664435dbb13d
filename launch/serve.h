// `llava-pipe serve CONFIG --listen ENDPOINT`: a long-running coordinator for clients, and
// `llava-pipe ask ENDPOINT ...`, its client. Protocol (ZeroMQ DEALER -> ROUTER): a request
// is [JSON {"id", "prompt", sampling keys}, image bytes...]; the answer is a stream of
// JSON messages {"id", "text"} and one final {"id", "done": true, "ok", "error", "text",
// "finish", "tokens"}. A client that goes away (its socket closes) has its request
// cancelled, which frees its KV cache slot and queue place.
#pragma once

#include <string>
#include <vector>

namespace llava {

int serve(const std::vector<std::string>& args);
int ask(const std::vector<std::string>& args);

}  // namespace llava
