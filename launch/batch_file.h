// A JSONL batch of requests, read one line at a time (a file of any length streams through
// in bounded memory), and its results, written in input order to a file that never holds
// a partial line.
#pragma once

#include <cstddef>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <unordered_map>

#include "common/config.h"
#include "coordinator/coordinator.h"

namespace llava {

struct BatchLine {
  int number = 0;       // in the file, from 1
  nlohmann::json id;    // the line's "id"; null when it has none (the result's "line" names it)
  RequestSpec spec;     // image paths resolved against the file's folder
  std::string error;    // why the line cannot become a request ("FILE:LINE: ...")
};

class BatchReader {
 public:
  // Throws ConfigError when the file cannot be opened.
  BatchReader(const std::string& path, const GenerationSection& defaults);
  // The next non-blank line, or nullopt at the end of the file. A line that repeats an
  // earlier line's id gets an error (two results with one id could not be told apart).
  std::optional<BatchLine> next();
  // Non-blank lines in the file (one quick pass, for progress and ETA).
  static size_t count_lines(const std::string& path);

 private:
  std::string path_;
  std::ifstream in_;
  std::filesystem::path folder_;
  GenerationSection defaults_;
  int number_ = 0;
  std::unordered_map<std::string, int> ids_;  // id as JSON text -> its line
};

// A line that failed on write, flush or close: names the file and the system's reason.
struct OutputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Results go to "OUT.partial" beside OUT, each write checked, and the file is renamed to OUT
// once it is complete and on disk (fsync); a reader of OUT never sees half a result. Where
// OUT is not a regular file (/dev/stdout, a pipe), lines go straight to it. On a failed
// write the partial file is cut back to its last whole line and renamed to OUT, so the
// results that were written are kept; the error says how many.
class ResultFile {
 public:
  // Throws ConfigError when OUT is the input file or cannot be created.
  ResultFile(const std::string& path, const std::string& input_path);
  ~ResultFile();
  ResultFile(const ResultFile&) = delete;
  ResultFile& operator=(const ResultFile&) = delete;

  void write_line(const std::string& line);  // throws OutputError
  void commit();                             // throws OutputError
  size_t lines() const { return lines_; }

 private:
  [[noreturn]] void fail(const std::string& what, int error);
  void keep_whole_lines();  // after a failure: cut to the last whole line, rename to OUT

  std::string path_, partial_;  // partial_ empty: writing to path_ directly
  int fd_ = -1;
  size_t lines_ = 0;
  uint64_t whole_bytes_ = 0;  // bytes of the lines written whole
  bool done_ = false;
};

// One result line: {"id", "line", "ok", then the answer or "error"}.
nlohmann::json result_json(const BatchLine& line, const RequestResult& result);

}  // namespace llava
