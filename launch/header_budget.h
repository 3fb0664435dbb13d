// A cap on what an HTTP handler thread receives from its client before the request is
// routed: cpp-httplib 0.11 (Debian 12's) caps each header line at 8 KiB but not their
// number, so one client's endless header block grew the coordinator's memory without bound
// (190 MB of lines: 18 -> 508 MB). The handler threads arm the budget when a request starts
// and disarm it once httplib routes it (the body has its own cap, server.max_body_bytes).
#pragma once

#include <cstdint>

namespace llava {
namespace header_budget {

// The request line and headers, and what httplib reads ahead of the body with them.
constexpr int64_t kBytes = 64 << 10;

// This thread's next request may receive kBytes before it is routed; past them its recv()
// sees the connection closed, and httplib drops it.
void arm();
// Routed, or the connection is done: this thread's recv() is not counted.
void disarm();

}  // namespace header_budget
}  // namespace llava
