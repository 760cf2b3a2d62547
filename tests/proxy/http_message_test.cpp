// The HTTP/1.1 message layer: what a request may look like before the proxy
// forwards it, and what it looks like when forwarded.

#include "proxy/http/http_message.h"

#include <gtest/gtest.h>

#include <string>

namespace gatehouse::proxy::http {
namespace {

struct Parsed {
  bool ok = false;
  std::string violation;
  RequestHead head;
  std::string body;
  bool done = false;
  std::size_t used = 0;
};

// Feeds `text` in one piece, or `step` bytes at a time.
Parsed parse(const std::string& text, std::size_t step = 0) {
  RequestParser parser;
  Parsed out;
  std::string in;
  std::size_t pos = 0;
  error_code ec;
  while (pos < text.size() || !in.empty()) {
    const std::size_t take = step == 0 ? text.size() - pos : std::min(step, text.size() - pos);
    in.append(text, pos, take);
    pos += take;
    const std::size_t used = parser.feed(in, ec);
    out.used += used;
    in.erase(0, used);
    if (ec || parser.is_done()) break;
    if (used == 0 && pos >= text.size()) break;
  }
  out.ok = !ec;
  out.violation = parser.violation();
  out.head = parser.head();
  out.body = parser.body();
  out.done = parser.is_done();
  return out;
}

std::string fields(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += "X-F" + std::to_string(i) + ": v\r\n";
  return s;
}

struct BadCase {
  const char* name;
  std::string request;
  const char* expect_in_reason;
};

TEST(HttpMessage, RefusesFramingThatCouldBeReadTwoWays) {
  const std::string start = "POST /owa/ HTTP/1.1\r\nHost: mail.contoso.com\r\n";
  const BadCase cases[] = {
      {"CL then TE", start + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "Transfer-Encoding"},
      {"TE then CL", start + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", "Content-Length"},
      {"differing CL", start + "Content-Length: 5\r\nContent-Length: 6\r\n\r\n", "Content-Length"},
      {"TE not chunked", start + "Transfer-Encoding: gzip\r\n\r\n", "chunked"},
      {"obs-fold space", start + "X-A: one\r\n two\r\n\r\n", "obs-fold"},
      {"obs-fold tab", start + "X-A: one\r\n\ttwo\r\n\r\n", "obs-fold"},
      {"space in name", start + "Bad Header: x\r\n\r\n", "name"},
      {"control in name", start + std::string("X-A\x01: y\r\n\r\n"), "name"},
      {"NUL in value", start + std::string("X-A: a\0b\r\n\r\n", 13), "value"},
      {"DEL in value",
       start + "X-A: a\x7f"
               "b\r\n\r\n",
       "value"},
      {"101 fields", "GET / HTTP/1.1\r\nHost: h\r\n" + fields(100) + "\r\n", "100 header fields"},
      {"header over 64 KiB", "GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + std::string(70000, 'a') + "\r\n\r\n", "64 KiB"},
      {"request line over 64 KiB", "GET /" + std::string(70000, 'a') + " HTTP/1.1\r\nHost: h\r\n\r\n", "64 KiB"},
      {"two Host", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "Host"},
      {"no Host", "GET / HTTP/1.1\r\nX-A: b\r\n\r\n", "Host"},
  };
  for (const auto& c : cases) {
    for (std::size_t step : {std::size_t{0}, std::size_t{7}}) {
      const Parsed p = parse(c.request, step);
      EXPECT_FALSE(p.ok) << c.name << " (step " << step << ")";
      EXPECT_NE(p.violation.find(c.expect_in_reason), std::string::npos)
          << c.name << ": reason was \"" << p.violation << "\"";
    }
  }
}

TEST(HttpMessage, AcceptsWhatIsWellFormed) {
  const Parsed ninety = parse("GET / HTTP/1.1\r\nHost: h\r\n" + fields(89) + "\r\n");
  EXPECT_TRUE(ninety.ok) << ninety.violation;
  EXPECT_TRUE(ninety.done);

  const Parsed same_cl = parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc");
  EXPECT_TRUE(same_cl.ok) << same_cl.violation;
  EXPECT_EQ(same_cl.body, "abc");

  const Parsed obs_text = parse("GET / HTTP/1.1\r\nHost: h\r\nX-A: caf\xc3\xa9\r\n\r\n");
  EXPECT_TRUE(obs_text.ok) << obs_text.violation;
}

TEST(HttpMessage, ChunkedBodyComesOutUnframedPieceByPiece) {
  const std::string request =
      "POST /rpc/rpcproxy.dll HTTP/1.1\r\nHost: mail.contoso.com\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 1\r\n\r\n";
  for (std::size_t step : {std::size_t{0}, std::size_t{1}, std::size_t{5}}) {
    RequestParser parser;
    std::string in, body;
    error_code ec;
    for (std::size_t i = 0; i < request.size() && !parser.is_done(); i += step ? step : request.size()) {
      in.append(request.substr(i, step ? step : request.size()));
      // feed() stops at the end of the head; go on while it makes progress.
      for (std::size_t used = 1; used > 0 && !in.empty() && !parser.is_done();) {
        used = parser.feed(in, ec);
        in.erase(0, used);
        ASSERT_FALSE(ec) << parser.violation();
      }
      body += parser.body();
      parser.body().clear();
    }
    EXPECT_TRUE(parser.is_done());
    EXPECT_EQ(body, "hello world") << "step " << step;
    EXPECT_TRUE(parser.head().chunked);
    ASSERT_EQ(parser.trailers().size(), 1u);
    EXPECT_EQ(parser.trailers()[0].name, "X-Checksum");
  }
}

TEST(HttpMessage, PipelinedRequestsStopAtTheFirstOnesEnd) {
  const std::string two = "GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n";
  RequestParser parser;
  error_code ec;
  const std::size_t used = parser.feed(two, ec);
  EXPECT_FALSE(ec);
  EXPECT_TRUE(parser.is_done());
  EXPECT_EQ(parser.head().target, "/a");
  EXPECT_EQ(two.substr(used), "GET /b HTTP/1.1\r\nHost: h\r\n\r\n");
}

TEST(HttpMessage, HopByHopAndForwardingFieldsNeverCross) {
  const Parsed p = parse(
      "GET /owa/ HTTP/1.1\r\nHost: mail.contoso.com\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: 5\r\n"
      "X-Secret: 1\r\nTE: trailers\r\nUpgrade: websocket\r\nProxy-Connection: x\r\n"
      "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: http\r\nForwarded: for=6.6.6.6\r\nX-Forwarded-Host: evil\r\n"
      "Cookie: a=b\r\nAuthorization: Negotiate abc\r\n\r\n");
  ASSERT_TRUE(p.ok) << p.violation;
  const std::string out = serialize_request(p.head, ForwardedFor{"192.0.2.7", "mail.contoso.com", "https"}, false);
  for (const char* gone : {"Connection", "Keep-Alive", "X-Secret", "TE:", "Upgrade", "Proxy-Connection", "6.6.6.6",
                           "evil", "proto=http;", "Proto: http\r"})
    EXPECT_EQ(out.find(gone), std::string::npos) << gone << " in\n" << out;
  for (const char* kept :
       {"GET /owa/ HTTP/1.1\r\n", "Host: mail.contoso.com\r\n", "Cookie: a=b\r\n", "Authorization: Negotiate abc\r\n",
        "X-Forwarded-For: 192.0.2.7\r\n", "X-Forwarded-Proto: https\r\n", "X-Forwarded-Host: mail.contoso.com\r\n",
        "Forwarded: for=192.0.2.7;proto=https;host=mail.contoso.com\r\n"})
    EXPECT_NE(out.find(kept), std::string::npos) << kept << " missing in\n" << out;
  EXPECT_TRUE(out.ends_with("\r\n\r\n"));
}

TEST(HttpMessage, ClientCertFieldIsOnlyTheProxys) {
  // Any case, in the head and in trailers: a client cannot claim an identity.
  const Parsed p = parse(
      "POST /ews HTTP/1.1\r\nHost: mail.contoso.com\r\nx-FORWARDED-client-CERT: Subject=\"CN=admin\"\r\n"
      "Transfer-Encoding: chunked\r\n\r\n0\r\nX-Forwarded-Client-Cert: Subject=\"CN=root\"\r\n\r\n");
  ASSERT_TRUE(p.ok) << p.violation;
  EXPECT_EQ(find_field(p.head.fields, "x-forwarded-client-cert"), nullptr);
  const std::string none = serialize_request(p.head, ForwardedFor{"192.0.2.7", "mail.contoso.com", "https"}, true);
  EXPECT_EQ(none.find("admin"), std::string::npos) << none;
  EXPECT_EQ(none.find("X-Forwarded-Client-Cert"), std::string::npos) << none;
  const std::string xfcc = "Hash=ab;Subject=\"CN=alice\"";
  const std::string out = serialize_request(p.head, ForwardedFor{"192.0.2.7", "mail.contoso.com", "https", xfcc}, true);
  EXPECT_NE(out.find("\r\nX-Forwarded-Client-Cert: Hash=ab;Subject=\"CN=alice\"\r\n"), std::string::npos) << out;
  for (const char* name : {"x-forwarded-client-cert", "X-Forwarded-Client-Cert", "forwarded", "X-Forwarded-For"})
    EXPECT_TRUE(is_forwarding_field(name)) << name;
  EXPECT_FALSE(is_forwarding_field("x-forwarded-client-certificate"));
}

TEST(HttpMessage, ForwardedQuotesIPv6AndPorts) {
  RequestHead head;
  head.method = "GET";
  head.target = "/";
  head.host = "mail.contoso.com:8443";
  const std::string out = serialize_request(head, ForwardedFor{"2001:db8::1", "mail.contoso.com:8443", "https"}, false);
  EXPECT_NE(out.find("Forwarded: for=\"[2001:db8::1]\";proto=https;host=\"mail.contoso.com:8443\"\r\n"),
            std::string::npos)
      << out;
}

TEST(HttpMessage, RequestFramingIsTheProxysOwn) {
  RequestHead head;
  head.method = "RPC_IN_DATA";
  head.target = "/rpc/rpcproxy.dll?mbx01:6001";
  head.host = "mail.contoso.com";
  head.content_length = 1073741824;
  EXPECT_NE(serialize_request(head, {"10.0.0.1", "mail.contoso.com"}, true).find("Content-Length: 1073741824\r\n"),
            std::string::npos);
  head.content_length.reset();
  const std::string chunked = serialize_request(head, {"10.0.0.1", "mail.contoso.com"}, true);
  EXPECT_NE(chunked.find("Transfer-Encoding: chunked\r\n"), std::string::npos);
  EXPECT_EQ(serialize_request(head, {"10.0.0.1", "mail.contoso.com"}, false).find("Transfer-Encoding"),
            std::string::npos);
}

TEST(HttpMessage, HostIsAlwaysSentBecauseTheLineSaysHttp11) {
  // An HTTP/1.0 client may send no Host; the backend reads HTTP/1.1, which
  // requires one (found by tests/fuzz/fuzz_http1_request's round trip).
  RequestParser p;
  error_code ec;
  p.feed("GET / HTTP/1.0\r\n\r\n", ec);
  ASSERT_FALSE(ec);
  ASSERT_TRUE(p.is_header_done());
  const std::string out = serialize_request(p.head(), ForwardedFor{"192.0.2.7", "", "https"}, false);
  EXPECT_NE(out.find("\r\nHost: \r\n"), std::string::npos) << out;
  RequestParser backend;
  backend.feed(out, ec);
  EXPECT_FALSE(ec) << backend.violation();
  EXPECT_TRUE(backend.is_header_done());
}

TEST(HttpMessage, ResponseParserKnowsBodilessAndCloseDelimitedResponses) {
  auto parse_response = [](const std::string& text, bool head_request) {
    ResponseParser parser;
    if (head_request) parser.skip(true);
    error_code ec;
    parser.feed(text, ec);
    EXPECT_FALSE(ec) << parser.violation();
    return std::tuple{parser.is_done(), parser.head().close_delimited, parser.head().status};
  };
  EXPECT_EQ(parse_response("HTTP/1.1 204 No Content\r\n\r\n", false), std::tuple(true, false, 204));
  EXPECT_EQ(parse_response("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", false),
            std::tuple(true, false, 304));
  EXPECT_EQ(parse_response("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true), std::tuple(true, false, 200));
  EXPECT_EQ(parse_response("HTTP/1.1 100 Continue\r\n\r\n", false), std::tuple(true, false, 100));
  EXPECT_EQ(parse_response("HTTP/1.1 200 OK\r\n\r\npartial", false), std::tuple(false, true, 200));
}

TEST(HttpMessage, ResponseStatusOutside100To599IsRefused) {
  // Beast reads any three digits; "020" would be forwarded as "HTTP/1.1 20"
  // (found by tests/fuzz/fuzz_http1_response).
  for (const char* text : {"HTTP/1.1 020 OK\r\n\r\n", "HTTP/1.1 099 X\r\n\r\n", "HTTP/1.1 600 X\r\n\r\n"}) {
    ResponseParser parser;
    error_code ec;
    parser.feed(text, ec);
    EXPECT_TRUE(ec) << text;
    EXPECT_NE(parser.violation().find("outside 100-599"), std::string::npos) << parser.violation();
  }
}

TEST(HttpMessage, FieldNamesKeepTheCaseTheyWereWrittenIn) {
  // Older Outlook builds read X-OWA-Version, Persistent-Auth... in no other
  // case (haproxy#561): a response goes to an HTTP/1.1 client as written.
  ResponseParser parser;
  error_code ec;
  std::string_view in =
      "HTTP/1.1 200 OK\r\nX-OWA-Version: 15.2.1118.7\r\nPersistent-Auth: true\r\nWWW-Authenticate: Negotiate\r\n"
      "X-MiXeD-CaSe: 1\r\nconnection: Keep-Alive\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5\r\nhello\r\n0\r\nX-Trailer-MiXeD: t\r\n\r\n";
  while (!in.empty() && !ec) {
    const std::size_t used = parser.feed(in, ec);
    if (used == 0) break;
    in.remove_prefix(used);
  }
  ASSERT_FALSE(ec) << parser.violation();
  ASSERT_TRUE(parser.is_done());
  // The framing and Connection are the proxy's own, conventionally written.
  EXPECT_EQ(serialize_response(parser.head(), true, true),
            "HTTP/1.1 200 OK\r\nX-OWA-Version: 15.2.1118.7\r\nPersistent-Auth: true\r\nWWW-Authenticate: Negotiate\r\n"
            "X-MiXeD-CaSe: 1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
  std::string last;
  append_last_chunk(last, parser.trailers());
  EXPECT_EQ(last, "0\r\nX-Trailer-MiXeD: t\r\n\r\n");
  // A request goes to an HTTP/1.1 backend as the client wrote it too (Host
  // is the proxy's own field).
  const Parsed p = parse("GET /owa/ HTTP/1.1\r\nhost: mail.contoso.com\r\nX-Client-MiXeD: 1\r\ncookie: a=b\r\n\r\n");
  ASSERT_TRUE(p.ok) << p.violation;
  const std::string out = serialize_request(p.head, ForwardedFor{"192.0.2.7", "mail.contoso.com", "https"}, false);
  EXPECT_TRUE(out.starts_with("GET /owa/ HTTP/1.1\r\nHost: mail.contoso.com\r\nX-Client-MiXeD: 1\r\ncookie: a=b\r\n"))
      << out;
}

TEST(HttpMessage, ChunkFraming) {
  std::string out;
  append_chunk(out, "hello");
  append_chunk(out, "");
  append_last_chunk(out, {{"X-T", "1"}});
  EXPECT_EQ(out, "5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n");
}

}  // namespace
}  // namespace gatehouse::proxy::http
