// Human-readable sizes and durations ("22GiB", "512MiB", "500ms") and their inverse.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace llava {

// Bytes from "22GiB", "512MiB", "1.5GB", "4096" (plain bytes). nullopt when malformed.
std::optional<uint64_t> parse_bytes(const std::string& text);
// Milliseconds from "500ms", "2s", "1.5s", "1m". A bare number is milliseconds.
std::optional<uint64_t> parse_millis(const std::string& text);
// "21.5 GiB", "512.0 MiB", "17 B".
std::string format_bytes(uint64_t bytes);
// "2 min", "1.5 s", "300 ms".
std::string format_millis(uint64_t millis);

}  // namespace llava
