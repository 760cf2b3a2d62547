#include "proxy/l7/h2_request.h"

namespace gatehouse::proxy::l7 {

bool Http2RequestHead::add(std::string_view name, std::string_view value) {
  if (name == ":method") head_.method = value;
  else if (name == ":path") path_ = value;
  else if (name == ":authority") authority_ = value;
  else if (name.starts_with(':')) return true;  // :scheme, and any nghttp2 let through
  else if (name == "host") {
    if (head_.host.empty()) head_.host = value;
  } else if (name == "content-length") {
    std::uint64_t length = 0;
    for (char c : value) {
      if (c < '0' || c > '9') return false;
      length = length * 10 + static_cast<std::uint64_t>(c - '0');
    }
    head_.content_length = length;
  } else if (name == "cookie") {
    // HTTP/2 splits cookies across fields; HTTP/1.1 wants one (RFC 9113 8.2.3).
    for (auto& f : head_.fields) {
      if (f.name == "cookie") {
        f.value += "; ";
        f.value += value;
        return true;
      }
    }
    head_.fields.push_back({"cookie", std::string(value)});
  } else if (http::forwards_request_field(name)) {
    head_.fields.push_back({std::string(name), std::string(value)});
  }
  return true;
}

void Http2RequestHead::add_trailer(std::string_view name, std::string_view value) {
  if (!name.starts_with(':') && http::forwards_request_field(name))
    trailers_.push_back({std::string(name), std::string(value)});
}

http::RequestHead& Http2RequestHead::finish(bool end_stream) {
  head_.target = path_;
  head_.version = 20;
  if (!authority_.empty()) head_.host = authority_;
  // Without END_STREAM a body follows, of the length stated or of one the
  // backend learns from chunked framing.
  if (!head_.content_length && !end_stream) head_.chunked = true;
  if (end_stream && !head_.content_length && head_.method != "GET" && head_.method != "HEAD") head_.content_length = 0;
  return head_;
}

void Http2RequestHead::clear() {
  http::Fields fields = std::move(head_.fields);
  fields.clear();
  head_ = http::RequestHead{};
  head_.fields = std::move(fields);
  authority_.clear();
  path_.clear();
  trailers_.clear();
}

}  // namespace gatehouse::proxy::l7
