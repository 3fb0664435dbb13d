// Image URLs to bytes: data URIs, file:// under a root folder, http(s) through libcurl.
#include "launch/openai_images.h"

#if LLAVA_PIPE_CURL
#include <curl/curl.h>
#endif

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <vector>

#include "launch/openai_api.h"

namespace llava {
namespace {

std::string shortened(const std::string& url) {
  return url.size() > 64 ? url.substr(0, 61) + "..." : url;
}

std::string from_data_uri(const std::string& url, const std::string& param) {
  const size_t comma = url.find(',');
  if (comma == std::string::npos)
    throw ApiError(400, param + ": a data URI needs a ',' before its data", param);
  const std::string header = url.substr(5, comma - 5);  // after "data:"
  if (header.rfind("image/", 0) != 0) {
    throw ApiError(
        400,
        param + ": a data URI must have an image/... media type, got '" + shortened(header) + "'",
        param);
  }
  if (header.size() < 7 || header.substr(header.size() - 7) != ";base64") {
    throw ApiError(400, param + ": only base64 data URIs are supported (data:image/png;base64,...)",
                   param);
  }
  return decode_base64(url.substr(comma + 1), param);
}

std::string from_file(const std::string& url, const std::string& param,
                      const ServerSection& server) {
  if (server.image_root.empty()) {
    throw ApiError(400, param + ": file:// URLs are off (set server.image_root to allow a folder)",
                   param);
  }
  std::error_code error;
  const auto path = std::filesystem::canonical(url.substr(7), error);
  const std::string root = server.image_root + "/";
  if (error || path.string().rfind(root, 0) != 0) {
    throw ApiError(400, param + ": " + shortened(url) + " is not a file under server.image_root",
                   param);
  }
  if (!std::filesystem::is_regular_file(path, error)) {
    throw ApiError(400, param + ": " + shortened(url) + " is not a regular file", param);
  }
  if (std::filesystem::file_size(path, error) > server.max_image_bytes) {
    throw ApiError(400, param + ": the image is over server.max_image_bytes", param);
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ApiError(400, param + ": cannot read " + shortened(url), param);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

struct Download {
  std::string bytes;
  uint64_t cap = 0;
  bool over = false;
};

bool is_private_ipv4(const uint8_t (&a)[4]) {
  return a[0] == 0 || a[0] == 10 || a[0] == 127 ||
         a[0] >= 224 ||  // this network, private, loopback, multicast + reserved
         (a[0] == 100 && (a[1] & 0xC0) == 64) ||     // 100.64/10, shared (carrier NAT)
         (a[0] == 169 && a[1] == 254) ||             // link-local, cloud metadata
         (a[0] == 172 && (a[1] & 0xF0) == 16) ||     // 172.16/12
         (a[0] == 192 && a[1] == 168) ||             // 192.168/16
         (a[0] == 192 && a[1] == 0 && a[2] == 0) ||  // 192.0.0/24, protocol assignments
         (a[0] == 198 && (a[1] & 0xFE) == 18);       // 198.18/15, benchmarking
}

bool is_private_ipv6(const uint8_t (&a)[16]) {
  const uint8_t zeros[10] = {};
  const bool first_ten_zero = std::equal(zeros, zeros + 10, a);
  static const uint8_t kNat64[12] = {0x00, 0x64, 0xFF, 0x9B};  // 64:ff9b::/96
  // ::ffff:a.b.c.d (IPv4-mapped) and NAT64: the IPv4 address inside decides.
  if ((first_ten_zero && a[10] == 0xFF && a[11] == 0xFF) || std::equal(kNat64, kNat64 + 12, a)) {
    const uint8_t v4[4] = {a[12], a[13], a[14], a[15]};
    return is_private_ipv4(v4);
  }
  return (first_ten_zero && a[10] == 0 && a[11] == 0) ||  // ::/96: ::, ::1, IPv4-compatible
         (a[0] & 0xFE) == 0xFC ||                         // fc00::/7, unique local
         (a[0] == 0xFE && (a[1] & 0xC0) == 0x80) ||       // fe80::/10, link-local
         (a[0] == 0xFE && (a[1] & 0xC0) == 0xC0) ||       // fec0::/10, old site-local
         a[0] == 0xFF;                                    // multicast
}

#if LLAVA_PIPE_CURL
// An address as its bytes (4 or 16), classified, with its text for messages.
struct Address {
  std::string bytes;
  std::string text;
  bool is_private = true;
};

// An IPv4 or IPv6 socket address; any other family counts as private.
Address classify(const sockaddr* address) {
  char text[INET6_ADDRSTRLEN] = "an address of another family";
  Address a;
  if (address->sa_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in*>(address)->sin_addr;
    a.bytes.assign(reinterpret_cast<const char*>(&in), 4);
    a.is_private = is_private_ipv4(reinterpret_cast<const uint8_t(&)[4]>(in));
    inet_ntop(AF_INET, &in, text, sizeof text);
  } else if (address->sa_family == AF_INET6) {
    const auto& in = reinterpret_cast<const sockaddr_in6*>(address)->sin6_addr;
    a.bytes.assign(reinterpret_cast<const char*>(&in), 16);
    a.is_private = is_private_ipv6(reinterpret_cast<const uint8_t(&)[16]>(in));
    inet_ntop(AF_INET6, &in, text, sizeof text);
  }
  a.text = text;
  return a;
}

// The addresses `host` (a name or a numeric address) resolves to; none where it does not.
std::vector<Address> resolve(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (host.empty() || getaddrinfo(host.c_str(), nullptr, &hints, &found) != 0) return {};
  std::vector<Address> out;
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    if (a->ai_family == AF_INET || a->ai_family == AF_INET6) out.push_back(classify(a->ai_addr));
  }
  freeaddrinfo(found);
  return out;
}

// A part of a URL (CURLUPART_HOST, without an IPv6 address's brackets; CURLUPART_SCHEME),
// "" where it has none. A URL without a scheme is taken as http:// (a proxy's may lack one).
std::string url_part(const std::string& url, CURLUPart part) {
  std::unique_ptr<CURLU, void (*)(CURLU*)> u(curl_url(), curl_url_cleanup);
  char* text = nullptr;
  if (!u ||
      curl_url_set(u.get(), CURLUPART_URL, url.c_str(),
                   CURLU_GUESS_SCHEME | CURLU_NON_SUPPORT_SCHEME) != CURLUE_OK ||
      curl_url_get(u.get(), part, &text, 0) != CURLUE_OK) {
    return "";
  }
  std::string out = text;
  curl_free(text);
  if (out.size() > 2 && out.front() == '[' && out.back() == ']')
    out = out.substr(1, out.size() - 2);
  return out;
}

// The proxy libcurl takes from the environment for a URL of `scheme`, "" for none: for
// http only the lower-case http_proxy (libcurl ignores HTTP_PROXY, which a CGI client can
// set), for https https_proxy or HTTPS_PROXY; then all_proxy or ALL_PROXY.
std::string environment_proxy(const std::string& scheme) {
  std::vector<const char*> names;
  if (scheme == "http") names = {"http_proxy"};
  if (scheme == "https") names = {"https_proxy", "HTTPS_PROXY"};
  names.insert(names.end(), {"all_proxy", "ALL_PROXY"});
  for (const char* name : names) {
    const char* value = std::getenv(name);
    if (value != nullptr && value[0] != '\0') return value;
  }
  return "";
}

// Every connection libcurl opens for an image goes through here with the address it
// resolved: a non-public one is refused before connecting, so no DNS answer that changes
// between lookups reaches the server's own network. The proxy's addresses are allowed:
// the environment that names it is the operator's.
struct AddressGuard {
  bool allow_private = false;
  std::vector<Address> proxy;
  std::string refused;  // the first address refused
};

curl_socket_t open_socket(void* data, curlsocktype purpose, curl_sockaddr* address) {
  auto* guard = static_cast<AddressGuard*>(data);
  if (purpose == CURLSOCKTYPE_IPCXN && !guard->allow_private) {
    const Address a = classify(&address->addr);
    const bool proxy = std::any_of(guard->proxy.begin(), guard->proxy.end(),
                                   [&](const Address& p) { return p.bytes == a.bytes; });
    if (a.is_private && !proxy) {
      if (guard->refused.empty()) guard->refused = a.text;
      return CURL_SOCKET_BAD;
    }
  }
  return socket(address->family, address->socktype, address->protocol);
}

size_t on_body(char* data, size_t size, size_t count, void* user) {
  auto* d = static_cast<Download*>(user);
  if (d->bytes.size() + size * count > d->cap) {
    d->over = true;
    return 0;  // ends the transfer
  }
  d->bytes.append(data, size * count);
  return size * count;
}

constexpr int kMaxRedirects = 5;
#endif

// Redirects are followed here, not by libcurl, so that each URL is checked before it is
// asked for. Without a proxy the check is the connection's address (open_socket). Through
// a proxy, which resolves names itself, the URL's host is resolved here and every address
// it has must be public (a name that changes its answer between our lookup and the
// proxy's is the one case this cannot see; allow_private_image_addresses off and no proxy
// sees it).
std::string from_http(const std::string& url, const std::string& param,
                      const ServerSection& server) {
  if (!server.allow_remote_images) {
    throw ApiError(400, param + ": http(s) image URLs are off (server.allow_remote_images)", param);
  }
#if !LLAVA_PIPE_CURL
  (void)url;
  throw ApiError(400, param + ": this llava-pipe was built without libcurl, so http(s) image URLs cannot be fetched", param);
#else
  std::unique_ptr<CURL, void (*)(CURL*)> curl(curl_easy_init(), curl_easy_cleanup);
  if (!curl) throw std::runtime_error("libcurl: cannot start a transfer");
  Download download;
  download.cap = server.max_image_bytes;
  char error[CURL_ERROR_SIZE] = "";
  curl_easy_setopt(curl.get(), CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(curl.get(), CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl.get(), CURLOPT_FAILONERROR, 1L);
  curl_easy_setopt(curl.get(), CURLOPT_MAXFILESIZE_LARGE,
                   static_cast<curl_off_t>(server.max_image_bytes));
  curl_easy_setopt(curl.get(), CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(curl.get(), CURLOPT_WRITEDATA, &download);
  curl_easy_setopt(curl.get(), CURLOPT_ERRORBUFFER, error);
  AddressGuard guard;
  guard.allow_private = server.allow_private_image_addresses;
  curl_easy_setopt(curl.get(), CURLOPT_OPENSOCKETFUNCTION, open_socket);
  curl_easy_setopt(curl.get(), CURLOPT_OPENSOCKETDATA, &guard);
  auto not_public = [&](const std::string& address) {
    return ApiError(400,
                    param + ": " + shortened(url) + " leads to " + address +
                        ", not a public address (server.allow_private_image_addresses allows it)",
                    param);
  };
  auto cannot_fetch = [&](const std::string& why) {
    return ApiError(400, param + ": cannot fetch " + shortened(url) + " (" + why + ")", param);
  };
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(server.remote_image_timeout_ms);
  std::string current = url;
  for (int redirects = 0;; ++redirects) {
    const std::string proxy = environment_proxy(url_part(current, CURLUPART_SCHEME));
    guard.proxy.clear();
    if (!proxy.empty() && !guard.allow_private) {
      guard.proxy = resolve(url_part(proxy, CURLUPART_HOST));
      const std::string host = url_part(current, CURLUPART_HOST);
      const std::vector<Address> addresses = resolve(host);
      if (addresses.empty()) {
        throw cannot_fetch("its host '" + shortened(host) +
                           "' does not resolve here, so its address cannot be checked");
      }
      for (const Address& a : addresses) {
        if (a.is_private) throw not_public(a.text);
      }
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) throw cannot_fetch("timed out after redirects");
    curl_easy_setopt(curl.get(), CURLOPT_URL, current.c_str());
    curl_easy_setopt(curl.get(), CURLOPT_TIMEOUT_MS, static_cast<long>(left.count()));
    download.bytes.clear();
    error[0] = '\0';
    const CURLcode code = curl_easy_perform(curl.get());
    if (code != CURLE_OK && !guard.refused.empty()) throw not_public(guard.refused);
    if (download.over || code == CURLE_FILESIZE_EXCEEDED) {
      throw ApiError(400,
                     param + ": the image at " + shortened(url) + " is over server.max_image_bytes",
                     param);
    }
    if (code != CURLE_OK) throw cannot_fetch(error[0] ? error : curl_easy_strerror(code));
    long status = 0;
    char* next = nullptr;
    curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &status);
    if (status / 100 != 3) return download.bytes;
    curl_easy_getinfo(curl.get(), CURLINFO_REDIRECT_URL, &next);
    if (next == nullptr) {
      throw cannot_fetch("HTTP " + std::to_string(status) + " without a Location to follow");
    }
    if (redirects == kMaxRedirects) {
      throw cannot_fetch("more than " + std::to_string(kMaxRedirects) + " redirects");
    }
    current = next;
  }
#endif
}

}  // namespace

bool is_private_address(const std::string& address) {
  uint8_t v4[4];
  uint8_t v6[16];
  if (inet_pton(AF_INET, address.c_str(), v4) == 1) return is_private_ipv4(v4);
  if (inet_pton(AF_INET6, address.c_str(), v6) == 1) return is_private_ipv6(v6);
  return true;
}

std::string decode_base64(const std::string& text, const std::string& param) {
  static const auto table = [] {
    std::array<int8_t, 256> t{};
    t.fill(-1);
    const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 64; ++i) t[static_cast<uint8_t>(alphabet[i])] = static_cast<int8_t>(i);
    return t;
  }();
  size_t end = text.size();
  int padding = 0;
  while (end > 0 && text[end - 1] == '=' && padding < 2) --end, ++padding;
  if ((padding > 0 && text.size() % 4 != 0) || end % 4 == 1) {
    throw ApiError(400, param + ": the data URI is not valid base64 (its length)", param);
  }
  std::string out;
  out.reserve(end / 4 * 3 + 2);
  uint32_t bits = 0;
  int count = 0;
  for (size_t i = 0; i < end; ++i) {
    const int8_t v = table[static_cast<uint8_t>(text[i])];
    if (v < 0) {
      throw ApiError(400,
                     param + ": the data URI is not valid base64 (byte " + std::to_string(i) +
                         " is not a base64 character)",
                     param);
    }
    bits = (bits << 6) | static_cast<uint32_t>(v);
    if (++count == 4) {
      out += static_cast<char>(bits >> 16);
      out += static_cast<char>(bits >> 8);
      out += static_cast<char>(bits);
      bits = 0, count = 0;
    }
  }
  if (count == 2) out += static_cast<char>(bits >> 4);
  if (count == 3) out += static_cast<char>(bits >> 10), out += static_cast<char>(bits >> 2);
  return out;
}

std::string image_format_problem(const std::string& b) {
  auto starts = [&](const char* magic, size_t n) {
    return b.size() >= n && b.compare(0, n, magic, n) == 0;
  };
  if (starts("\xFF\xD8\xFF", 3) || starts("\x89PNG\r\n\x1A\n", 8) || starts("GIF8", 4) ||
      starts("BM", 2)) {
    return "";
  }
  if (b.empty()) return "the image is empty (0 bytes)";
  return "not a JPEG, PNG, GIF or BMP image";
}

std::pair<uint64_t, uint64_t> image_size(const std::string& b) {
  auto byte = [&](size_t i) -> uint64_t { return i < b.size() ? static_cast<uint8_t>(b[i]) : 0; };
  auto be16 = [&](size_t i) { return byte(i) << 8 | byte(i + 1); };
  auto be32 = [&](size_t i) { return be16(i) << 16 | be16(i + 2); };
  auto le16 = [&](size_t i) { return byte(i) | byte(i + 1) << 8; };
  if (b.size() >= 24 && b.compare(0, 8, "\x89PNG\r\n\x1A\n", 8) == 0) return {be32(16), be32(20)};
  if (b.size() >= 10 && b.compare(0, 4, "GIF8") == 0) return {le16(6), le16(8)};
  if (b.size() >= 26 && b.compare(0, 2, "BM") == 0) {
    const auto height = static_cast<int32_t>(le16(22) | le16(24) << 16);  // negative: top-down
    return {le16(18) | le16(20) << 16,
            static_cast<uint64_t>(height < 0 ? -int64_t{height} : height)};
  }
  if (b.size() >= 4 && byte(0) == 0xFF && byte(1) == 0xD8) {  // JPEG: walk the markers to a SOFn
    size_t at = 2;
    while (at + 9 < b.size() && byte(at) == 0xFF) {
      const uint64_t marker = byte(at + 1);
      if (marker == 0xD8 || marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7) ||
          marker == 0xFF) {
        at += marker == 0xFF ? 1 : 2;
        continue;
      }
      const bool frame =
          marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC;
      if (frame) return {be16(at + 7), be16(at + 5)};
      at += 2 + be16(at + 2);
    }
  }
  return {0, 0};
}

std::string fetch_image(const std::string& url, const std::string& param,
                        const ServerSection& server) {
  std::string bytes;
  if (url.rfind("data:", 0) == 0) {
    bytes = from_data_uri(url, param);
  } else if (url.rfind("file://", 0) == 0) {
    bytes = from_file(url, param, server);
  } else if (url.rfind("http://", 0) == 0 || url.rfind("https://", 0) == 0) {
    bytes = from_http(url, param, server);
  } else {
    throw ApiError(400,
                   param + ": unsupported image URL '" + shortened(url) +
                       "' (expected data:, file:// or http(s)://)",
                   param);
  }
  if (bytes.size() > server.max_image_bytes) {
    throw ApiError(400,
                   param + ": the image is " + std::to_string(bytes.size()) +
                       " bytes, over server.max_image_bytes",
                   param);
  }
  if (const std::string problem = image_format_problem(bytes); !problem.empty()) {
    throw ApiError(400, param + ": " + problem, param);
  }
  const auto [width, height] = image_size(bytes);
  if (width * height > server.max_image_pixels) {
    throw ApiError(400,
                   param + ": the image is " + std::to_string(width) + "x" +
                       std::to_string(height) + ", over server.max_image_pixels (" +
                       std::to_string(server.max_image_pixels) + ")",
                   param);
  }
  return bytes;
}

}  // namespace llava
