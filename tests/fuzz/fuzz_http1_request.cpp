// The HTTP/1.1 request head as h1_session reads it: RequestParser (Beast
// plus Gatehouse's framing rules) fed the client's bytes as they arrive, in
// pieces whose size the first input byte chooses (0: all at once), then the
// body the same way. What it accepts is serialized towards the backend, and
// that must read back as the same request: a proxy that emits a head its
// backend reads another way is a request-smuggling gadget.

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

#include "proxy/http/http_message.h"
#include "proxy/l7/windows_auth.h"
#include "tests/fuzz/fuzz_check.h"

using gatehouse::fuzz::expect;
namespace l7 = gatehouse::proxy::l7;
namespace http = gatehouse::proxy::http;

namespace {

// Header lines of a serialized head (its CRLFs less the status or request
// line's and the blank line's).
std::size_t field_lines(std::string_view head) {
  std::size_t n = 0;
  for (std::size_t at = head.find("\r\n"); at != std::string_view::npos; at = head.find("\r\n", at + 2)) ++n;
  return n >= 2 ? n - 2 : 0;
}

// Feeds `in` as h1_session does; false when the parser refused it.
bool feed(http::RequestParser& parser, std::string& in, std::size_t& head_bytes) {
  while (!in.empty()) {
    http::error_code ec;
    const bool head_done_before = parser.is_header_done();
    const std::size_t used = parser.feed(in, ec);
    expect(used <= in.size(), "the parser consumes no more than it was given");
    in.erase(0, used);
    if (!head_done_before) head_bytes += used;
    if (ec) {
      expect(!parser.violation().empty(), "a refused request says why");
      return false;
    }
    if (parser.is_done()) return true;
    if (used == 0) break;  // needs more
  }
  // h1_session refuses a head that has grown past the limit without ending.
  return parser.is_header_done() || head_bytes + in.size() <= http::kMaxHeaderBytes;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t split = data[0] == 0 ? size : data[0];
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);

  http::RequestParser parser;
  std::string in;
  std::size_t head_bytes = 0;
  bool ok = true;
  for (std::size_t at = 0; ok && at < input.size() && !parser.is_done(); at += split) {
    in.append(input.substr(at, split));
    ok = feed(parser, in, head_bytes);
  }
  if (!parser.is_header_done()) return 0;

  const http::RequestHead& head = parser.head();
  expect(head.version == 10 || head.version == 11, "only HTTP/1.0 and 1.1 heads are accepted");
  expect(!(head.content_length && head.chunked), "never both Content-Length and chunked");
  (void)l7::request_auth(head.fields);
  for (const auto& f : head.fields) expect(!http::is_hop_by_hop(f.name), "hop-by-hop fields never cross the proxy");

  const bool has_body = head.content_length ? *head.content_length > 0 : head.chunked;
  const http::ForwardedFor forwarded{"192.0.2.1", head.host, "https"};
  const std::string out = http::serialize_request(head, forwarded, has_body);

  // What the backend reads, modelled by the same parser: that is fair only
  // within the limits Gatehouse sets its own clients, which the fields the
  // proxy adds (Host, X-Forwarded-*, Forwarded, framing) may cross.
  if (out.size() > http::kMaxHeaderBytes || field_lines(out) > http::kMaxHeaderFields) return 0;
  http::RequestParser backend;
  http::error_code ec;
  const std::size_t used = backend.feed(out, ec);
  if (ec) std::fprintf(stderr, "backend refuses: %s\n%s\n", backend.violation().c_str(), out.c_str());
  expect(!ec, "the backend accepts the head the proxy sends");
  expect(backend.is_header_done() && used == out.size(), "the head the proxy sends is one whole head");
  const http::RequestHead& again = backend.head();
  expect(again.method == head.method && again.target == head.target, "the backend reads the same request line");
  expect(again.host == head.host, "the backend reads the same Host");
  expect(again.content_length == head.content_length, "the backend reads the same Content-Length");
  expect(again.chunked == (has_body && !head.content_length), "the backend reads the proxy's framing");
  return 0;
}
