// Batch files: streamed request lines, and result files written whole or not at all.
#include "launch/batch_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "common/errors.h"
#include "launch/request_json.h"

namespace llava {
namespace fs = std::filesystem;

BatchReader::BatchReader(const std::string& path, const GenerationSection& defaults)
    : path_(path), in_(path), folder_(fs::path(path).parent_path()), defaults_(defaults) {
  std::error_code error;
  if (fs::is_directory(path, error)) throw ConfigError(path + ": is a directory, not a requests file");
  if (!in_) throw ConfigError(path + ": cannot open the requests file: " + std::strerror(errno));
}

size_t BatchReader::count_lines(const std::string& path) {
  std::ifstream in(path);
  size_t count = 0;
  for (std::string text; std::getline(in, text);) {
    if (text.find_first_not_of(" \t\r") != std::string::npos) ++count;
  }
  return count;
}

std::optional<BatchLine> BatchReader::next() {
  std::string text;
  while (std::getline(in_, text)) {
    ++number_;
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    BatchLine line;
    line.number = number_;
    const std::string where = path_ + ":" + std::to_string(number_) + ": ";
    JsonRequest request;
    request.generation = defaults_;
    try {
      parse_json_request(text, true, request);
      line.spec.prompt = request.prompt;
      line.spec.generation = request.generation;
      for (const auto& p : request.image_paths) {
        fs::path image(p);
        line.spec.image_paths.push_back(image.is_relative() ? (folder_ / image).string() : p);
      }
    } catch (const RequestError& e) {
      line.error = where + e.what();
    }
    line.id = request.id;
    if (!line.id.is_null()) {
      auto [first, inserted] = ids_.emplace(json_text(line.id), number_);
      if (!inserted && line.error.empty()) {
        line.error = where + "id " + json_text(line.id) + " is already used by line " +
                     std::to_string(first->second) + "; give each line its own id";
      }
    }
    return line;
  }
  return std::nullopt;
}

ResultFile::ResultFile(const std::string& path, const std::string& input_path) : path_(path) {
  std::error_code error;
  if (fs::exists(path, error) && fs::equivalent(path, input_path, error)) {
    throw ConfigError(path + ": the output file is the requests file; write the results elsewhere");
  }
  if (fs::is_directory(path, error)) throw ConfigError(path + ": is a directory; name a file for the results");
  struct stat info {};
  const bool special = stat(path.c_str(), &info) == 0 && !S_ISREG(info.st_mode);
  if (special) {  // a device or a pipe: no rename possible, lines go straight to it
    fd_ = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  } else {
    partial_ = path + ".partial";
    fd_ = open(partial_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  }
  if (fd_ < 0) {
    throw ConfigError((partial_.empty() ? path : partial_) + ": cannot write the results: " +
                      std::strerror(errno));
  }
}

ResultFile::~ResultFile() {
  if (done_) return;
  // Not committed (an exception on the way out): keep what was written whole.
  if (!partial_.empty()) keep_whole_lines();
  if (fd_ >= 0) close(fd_);
}

namespace {

// Fault injection for the tests: the file system is full past this many bytes (0: off).
uint64_t fault_output_limit() {
  const char* value = std::getenv("LLAVA_PIPE_FAULT_OUTPUT_LIMIT");
  return value ? std::strtoull(value, nullptr, 10) : 0;
}

}  // namespace

void ResultFile::write_line(const std::string& line) {
  const std::string text = line + "\n";
  static const uint64_t limit = fault_output_limit();
  size_t written = 0;
  while (written < text.size()) {
    size_t room = text.size() - written;
    if (limit > 0) room = std::min<uint64_t>(room, limit > whole_bytes_ + written ? limit - whole_bytes_ - written : 0);
    const ssize_t n = room == 0 ? (errno = ENOSPC, -1) : ::write(fd_, text.data() + written, room);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("writing result " + std::to_string(lines_ + 1), n < 0 ? errno : ENOSPC);
    written += static_cast<size_t>(n);
  }
  ++lines_;
  whole_bytes_ += text.size();
}

void ResultFile::commit() {
  if (done_) return;
  if (partial_.empty()) {
    if (close(fd_) != 0) {
      const int error = errno;
      fd_ = -1;
      fail("closing", error);
    }
    fd_ = -1;
    done_ = true;
    return;
  }
  if (fsync(fd_) != 0) fail("saving (fsync)", errno);
  if (close(fd_) != 0) {
    const int error = errno;
    fd_ = -1;
    fail("closing", error);
  }
  fd_ = -1;
  if (std::rename(partial_.c_str(), path_.c_str()) != 0) fail("renaming " + partial_ + " to it", errno);
  done_ = true;
}

void ResultFile::keep_whole_lines() {
  if (fd_ >= 0) {
    if (ftruncate(fd_, static_cast<off_t>(whole_bytes_)) != 0) { /* the rename still helps */ }
    close(fd_);
    fd_ = -1;
  }
  std::rename(partial_.c_str(), path_.c_str());
  done_ = true;
}

void ResultFile::fail(const std::string& what, int error) {
  std::string message = path_ + ": " + what + " failed: " + std::strerror(error);
  if (!partial_.empty()) {
    keep_whole_lines();
    message += "; it holds the " + std::to_string(lines_) + " whole results written before";
  } else {
    done_ = true;
    message += " (after " + std::to_string(lines_) + " whole results)";
  }
  throw OutputError(message);
}

nlohmann::json result_json(const BatchLine& line, const RequestResult& r) {
  nlohmann::json out = {{"id", line.id}, {"line", line.number}, {"ok", r.ok}};
  if (r.ok) {
    out["text"] = r.text;
    out["finish"] = r.finish;
    out["prompt_tokens"] = r.prompt_tokens;
    out["generated_tokens"] = r.tokens.size();
    out["attempts"] = r.attempts;
    out["cached_images"] = r.cached_images;
    out["timings_ms"] = {{"vision", r.vision_ms}, {"first_token", r.first_token_ms}, {"total", r.total_ms}};
    if (!r.logprobs.empty()) out["logprobs"] = logprobs_array(r.logprobs);  // asked for
  } else {
    out["error"] = r.error;
  }
  return out;
}

}  // namespace llava
