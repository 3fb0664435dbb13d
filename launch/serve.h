// `llava-pipe serve CONFIG [--http HOST:PORT] [--listen ENDPOINT]`: a long-running
// coordinator for clients, over HTTP (the OpenAI API: launch/http_server.h) and/or ZeroMQ,
// and `llava-pipe ask ENDPOINT ...`, the ZeroMQ client. It fails fast, with the reason, when
// nobody listens or the server hangs up. Protocol (ZeroMQ DEALER -> ROUTER): a request
// is [JSON {"id", "prompt", sampling keys}, image bytes...]; the answer is a stream of
// JSON messages {"id", "text"} and one final {"id", "done": true, "ok", "error", "text",
// "finish", "tokens"}. A client that goes away (its socket closes) has its request
// cancelled, which frees its KV cache slot and queue place. A request whose frames together
// are over coordinator.max_message_size is answered with an error.
#pragma once

#include "launch/commands.h"

namespace llava {

Command add_serve(CLI::App& app);
Command add_ask(CLI::App& app);

}  // namespace llava
