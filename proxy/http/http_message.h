#pragma once
// HTTP/1.1 messages as the proxy sees them: Boost.Beast's parser fed from
// the proxy's own buffers (so a body is never held whole: payload comes out
// piece by piece, unframed), the request checks that keep a request from
// being read two ways (RFC 9112 section 6.3, 11.2), and head serialization
// with the proxy's own framing.

#include <boost/beast/http/basic_parser.hpp>
#include <boost/system/error_code.hpp>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace gatehouse::proxy::http {

using error_code = boost::system::error_code;

struct Field {
  std::string name;
  std::string value;
};
using Fields = std::vector<Field>;

// Case-insensitive lookup; nullptr when absent.
const std::string* find_field(const Fields& fields, std::string_view name);

struct RequestHead {
  std::string method;
  std::string target;  // as sent: origin-form "/owa/?a=b" (h2: :path)
  std::string host;    // Host or :authority, as sent
  int version = 11;    // 10 or 11 (h2 requests are 20)
  Fields fields;       // end-to-end fields only (hop-by-hop and framing removed)
  std::optional<std::uint64_t> content_length;
  bool chunked = false;    // body of unknown length follows
  bool keep_alive = true;  // client wants the connection kept
  bool expect_continue = false;

  // A body follows the head: chunked (HTTP/2: no END_STREAM on the HEADERS)
  // or a Content-Length over 0.
  bool has_body() const { return chunked || (content_length && *content_length > 0); }
};

struct ResponseHead {
  int status = 0;
  std::string reason;
  int version = 11;
  Fields fields;  // end-to-end fields only
  std::optional<std::uint64_t> content_length;
  bool chunked = false;
  bool keep_alive = true;
  // The body runs to the end of the connection (no length, not chunked).
  bool close_delimited = false;
};

// Limits of SPEC/issue: a request line or header block over 64 KiB, or more
// than 100 fields, is refused.
inline constexpr std::uint32_t kMaxHeaderBytes = 64 * 1024;
inline constexpr std::size_t kMaxHeaderFields = 100;

// Parses one message (request or response) from bytes the caller supplies.
// Body payload is appended to body(); the caller takes it with take_body().
template <bool isRequest>
class Parser final : public boost::beast::http::basic_parser<isRequest> {
 public:
  using Head = std::conditional_t<isRequest, RequestHead, ResponseHead>;

  Parser();

  // Consumes what it can of `data`; 0 with no error means "need more". On
  // error, violation() says what was wrong in words a log reader knows.
  std::size_t feed(std::string_view data, error_code& ec);
  // End of stream from the peer (ends a close-delimited body).
  void feed_eof(error_code& ec);

  Head& head() { return head_; }
  std::string& body() { return body_; }
  Fields& trailers() { return trailers_; }
  const std::string& violation() const { return violation_; }
  bool in_trailers() const { return in_trailers_; }

 private:
  void on_request_impl(boost::beast::http::verb, boost::beast::string_view method, boost::beast::string_view target,
                       int version, error_code& ec) override;
  void on_response_impl(int status, boost::beast::string_view reason, int version, error_code& ec) override;
  void on_field_impl(boost::beast::http::field, boost::beast::string_view name, boost::beast::string_view value,
                     error_code& ec) override;
  void on_header_impl(error_code& ec) override;
  void on_body_init_impl(const boost::optional<std::uint64_t>&, error_code&) override {}
  std::size_t on_body_impl(boost::beast::string_view body, error_code& ec) override;
  void on_chunk_header_impl(std::uint64_t size, boost::beast::string_view extensions, error_code& ec) override;
  std::size_t on_chunk_body_impl(std::uint64_t remain, boost::beast::string_view body, error_code& ec) override;
  void on_finish_impl(error_code&) override {}

  void fail(error_code& ec, std::string why);

  Head head_;
  Fields raw_;  // every field as received, hop-by-hop included
  std::string body_;
  Fields trailers_;
  std::string violation_;
  bool in_trailers_ = false;
  std::size_t field_count_ = 0;
  bool checked_fold_ = false;
};

extern template class Parser<true>;
extern template class Parser<false>;
using RequestParser = Parser<true>;
using ResponseParser = Parser<false>;

// What the proxy adds to a request it forwards: the client as it really is.
// Views: the caller's strings outlive the serialize_request() call.
struct ForwardedFor {
  std::string_view client_address;  // "192.0.2.1" or "2001:db8::1"
  std::string_view host;            // the Host the client asked for
  std::string_view proto = "https";
  // X-Forwarded-Client-Cert (Envoy's format) of the client's verified
  // certificate; "" when it presented none.
  std::string_view client_cert;
};

// Request head towards an HTTP/1.1 backend. Framing is the proxy's:
// Content-Length when known, else chunked when a body follows.
// X-Forwarded-For/-Proto/-Host, Forwarded and X-Forwarded-Client-Cert are
// replaced, never trusted.
std::string serialize_request(const RequestHead& head, const ForwardedFor& forwarded, bool has_body);

// Response head towards an HTTP/1.x client. `chunked` and `close` are the
// proxy's framing decisions for this client.
std::string serialize_response(const ResponseHead& head, bool chunked, bool close);

// The proxy's own short answer (400, 403, 404, 421, 502, 503, 504...):
// text/plain, never cached, saying the status and why. Every codec sends
// this one, as a Downstream (l7) or on the wire (error_response).
struct ErrorResponse {
  ResponseHead head;
  std::string body;
};
ErrorResponse make_error(int status, std::string_view detail);
// A 301/302 to `location`, with a short body naming it.
ErrorResponse make_redirect(int status, std::string_view location);
// make_error() as HTTP/1.1 bytes; `close` adds Connection: close.
std::string error_response(int status, std::string_view detail, bool close, bool head_only = false);
std::string_view reason_phrase(int status);

// Chunked framing of one piece and of the end (with trailers).
void append_chunk(std::string& out, std::string_view data);
void append_last_chunk(std::string& out, const Fields& trailers);

// Whether a field belongs to one connection and never crosses the proxy in
// either direction: hop-by-hop (RFC 9110 7.6.1) and framing (Content-Length,
// Transfer-Encoding), which the proxy writes itself.
bool is_hop_by_hop(std::string_view name);
// Whether a request field is one the proxy sets itself (Host, X-Forwarded-*,
// Forwarded, X-Forwarded-Client-Cert): whatever the client sent in it is
// dropped.
bool is_forwarding_field(std::string_view name);
// The one filter for every field a client sends, in HTTP/1.1 and HTTP/2
// alike (heads and trailers, any case): false for hop-by-hop and framing
// fields, the fields an HTTP/1.1 Connection field lists
// (`connection_listed`), and the forwarding fields. A client can smuggle
// none of them to a backend.
bool forwards_request_field(std::string_view name, std::span<const std::string_view> connection_listed = {});

}  // namespace gatehouse::proxy::http
