// What every HTTP handler answers with: a JSON body, or an error in the OpenAI envelope;
// and the numbers that name responses (completion ids, internal errors in the server's log).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace httplib {
struct Response;
}  // namespace httplib

namespace llava {

void answer_json(httplib::Response& res, int status, const nlohmann::json& body);
void answer_error(httplib::Response& res, int status, const std::string& message,
                  const std::string& param = "", const std::string& code = "");

// 1, 2, 3...: one counter for the whole process, shared by every kind of response.
uint64_t next_response_number();
int64_t unix_now();  // seconds: the OpenAI bodies' "created"

}  // namespace llava
