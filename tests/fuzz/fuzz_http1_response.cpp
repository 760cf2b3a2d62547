// A backend's response as exchange.cpp reads it: ResponseParser fed in
// pieces whose size the first input byte chooses (0: all at once; its top
// bit answers a HEAD request), 1xx heads followed by the final one, the end
// of the stream ending a close-delimited body. The head it accepts is
// serialized for the client, which must read back the same status and framing.

#include <cstdint>
#include <cstdio>
#include <optional>
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

void check_head(http::ResponseHead& head, bool head_request) {
  (void)l7::response_binds(head.status, head.fields);
  for (const auto& f : head.fields) expect(!http::is_hop_by_hop(f.name), "hop-by-hop fields never cross the proxy");
  if (head.status / 100 == 1) return;  // interim: exchange.cpp passes on 100 only, as its own head
  const bool has_body = !head_request && head.status != 204 && head.status != 304;
  const bool chunked = has_body && !head.content_length;
  const bool close = !head.keep_alive;
  const std::string out = http::serialize_response(head, chunked, close);

  // What the client reads, modelled by the same parser: that is fair only
  // within the limits Gatehouse sets its backends, which the framing fields
  // the proxy adds may cross.
  if (out.size() > http::kMaxHeaderBytes || field_lines(out) > http::kMaxHeaderFields) return;
  http::ResponseParser client;
  if (head_request) client.skip(true);
  http::error_code ec;
  const std::size_t used = client.feed(out, ec);
  if (ec) std::fprintf(stderr, "client refuses: %s\n%s\n", client.violation().c_str(), out.c_str());
  expect(!ec, "the client accepts the head the proxy sends");
  expect(client.is_header_done() && used == out.size(), "the head the proxy sends is one whole head");
  expect(client.head().status == head.status, "the client reads the same status");
  expect(client.head().content_length == head.content_length, "the client reads the same Content-Length");
  if (chunked) expect(client.head().chunked, "the client reads the proxy's chunked framing");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const bool head_request = (data[0] & 0x80) != 0;
  const std::size_t split = (data[0] & 0x7f) == 0 ? size : (data[0] & 0x7f);
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);

  std::optional<http::ResponseParser> parser;
  parser.emplace();
  if (head_request) parser->skip(true);
  std::string carry;
  bool head_delivered = false;
  for (std::size_t at = 0; at < input.size(); at += split) {
    std::string_view piece = input.substr(at, split);
    if (!carry.empty()) {
      carry.append(piece);
      piece = carry;
    }
    std::string_view rest = piece;
    bool done = false;
    while (!rest.empty()) {
      http::error_code ec;
      const std::size_t used = parser->feed(rest, ec);
      if (ec) {
        expect(!parser->violation().empty(), "a refused response says why");
        return 0;
      }
      expect(used <= rest.size(), "the parser consumes no more than it was given");
      rest.remove_prefix(used);
      if (parser->is_header_done() && !head_delivered) {
        http::ResponseHead& head = parser->head();
        check_head(head, head_request);
        if (head.status / 100 == 1) {
          if (head.status == 101) return 0;  // not proxied
          parser.emplace();
          if (head_request) parser->skip(true);
          continue;
        }
        head_delivered = true;
      }
      parser->body().clear();
      if (parser->is_done()) {
        done = true;
        break;
      }
      if (used == 0) break;
    }
    if (done) return 0;
    carry = std::string(rest);
    if (carry.size() > http::kMaxHeaderBytes + 16 * 1024) return 0;  // exchange.cpp gives up there
  }
  if (parser->is_header_done() && parser->need_eof()) {
    http::error_code ec;
    parser->feed_eof(ec);
  }
  return 0;
}
