// What an HTTP handler thread may receive from its client, and by when. cpp-httplib 0.11
// (Debian 12's) caps each header line at 8 KiB but not their number, and kept them all: one
// client's endless header block grew the coordinator's memory without bound (190 MB of
// lines: 18 -> 508 MB). And it times each read (30 s) but not a request: a client that sent
// a byte every few seconds held a handler thread for as long as it liked, and
// max_connections such clients held the whole API.
// A handler thread starts each request's budget; its line and headers may take kHeaderBytes,
// and the whole request (line, headers, body) must arrive within the timeout, counted from
// its first byte. Past either, the thread's recv() sees the connection closed.
#pragma once

#include <cstdint>

namespace llava {
namespace receive_budget {

// The request line and headers, and what httplib reads ahead of the body with them.
constexpr int64_t kHeaderBytes = 64 << 10;

// The process's timeout for receiving a request (server.receive_timeout); 0: none.
void set_timeout_ms(uint64_t ms);

// A connection this thread handles begins, with its first request (its bytes counted and
// timed); ends: nothing this thread receives is counted or timed.
void connection_begins();
void connection_ends();
// An answer was written: the connection's next request begins (its bytes counted and
// timed), or, if it was refused, its wait for one ends.
void answer_written();
// Routed, so the headers are in: the body is not counted (it has its own cap,
// server.max_body_bytes) but still timed.
void headers_read();
// The request is in: nothing more is counted or timed (a streamed answer takes as long as
// it takes).
void request_read();
// The answer being made is the connection's last: its recv() sees it closed from now on,
// so that httplib closes it after the answer, whatever its keep-alive.
void refuse_the_rest();
// Why this thread's recv() last saw its request's connection closed when the client had
// not closed it.
enum class Cut { kNone, kHeaderBytes, kTimeout };
Cut cut();

}  // namespace receive_budget
}  // namespace llava
