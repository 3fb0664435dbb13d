// Error types shared by every process. Inside a process errors are exceptions with a
// message a user can act on; at process edges they become a Failure message or an exit code.
#pragma once

#include <stdexcept>
#include <string>

namespace llava {

// A configuration or usage error: the process exits with code 2.
struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A message that breaks the wire format (bad header, frames that do not match it).
struct WireError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A model checkpoint that cannot be used (missing file, wrong tensor, lying header).
struct CheckpointError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Input of one request that cannot be processed (bad image, prompt too long).
struct RequestError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// An endpoint that cannot be bound or reached (in use, no such host); names the endpoint.
struct TransportError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

constexpr int kExitRuntime = 1;
constexpr int kExitUsage = 2;
// `run --requests`: the batch ran to its end, but some lines have an error result.
constexpr int kExitSomeFailed = 3;

}  // namespace llava
