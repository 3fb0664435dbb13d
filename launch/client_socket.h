// The socket of the connection an httplib handler serves, found by its two ports: httplib
// 0.11 does not hand it to handlers, and a handler polls it to see its client go away.
#pragma once

namespace httplib {
struct Request;
}  // namespace httplib

namespace llava {

// The socket's descriptor, or -1 if none is found (then a client gone is seen only when a
// write fails).
int client_socket(const httplib::Request& req);

}  // namespace llava
