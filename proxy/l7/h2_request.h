#pragma once
// An HTTP/2 request's header block made into the RequestHead an HTTP/1.1
// request gives, so that the one request path never sees which protocol it
// serves: pseudo-headers to method, target and authority (RFC 9113 8.3.1),
// split cookies joined (8.2.3), and every other field through the same
// filter as HTTP/1.1's (http::forwards_request_field).

#include <string>
#include <string_view>

#include "proxy/http/http_message.h"

namespace gatehouse::proxy::l7 {

class Http2RequestHead {
 public:
  // One field of the header block; false when the request is malformed (a
  // Content-Length that is not a number).
  bool add(std::string_view name, std::string_view value);
  // One field of the trailer block.
  void add_trailer(std::string_view name, std::string_view value);
  // The head as the request path takes it, once the header block has
  // ended; `end_stream`: the HEADERS frame ended the stream (no body).
  http::RequestHead& finish(bool end_stream);
  // Empty again for the next stream, keeping the field list's storage.
  void clear();

  http::RequestHead& head() { return head_; }
  const http::Fields& trailers() const { return trailers_; }

 private:
  http::RequestHead head_;
  std::string authority_, path_;
  http::Fields trailers_;
};

}  // namespace gatehouse::proxy::l7
