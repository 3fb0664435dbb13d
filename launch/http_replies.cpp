// JSON answers, OpenAI error bodies and response numbers (see http_replies.h).
#include "launch/http_replies.h"

#include <httplib.h>

#include <atomic>
#include <ctime>

#include "launch/openai_api.h"
#include "launch/request_json.h"

namespace llava {
namespace {

std::atomic<uint64_t> g_next_response{1};

}  // namespace

uint64_t next_response_number() {
  return g_next_response++;
}

int64_t unix_now() {
  return static_cast<int64_t>(std::time(nullptr));
}

void answer_json(httplib::Response& res, int status, const nlohmann::json& body) {
  res.status = status;
  res.set_content(json_text(body), "application/json");
}

void answer_error(httplib::Response& res, int status, const std::string& message,
                  const std::string& param, const std::string& code) {
  answer_json(res, status, error_body(status, message, param, code));
}

}  // namespace llava
