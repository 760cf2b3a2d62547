// The one filter for client-sent fields: an attacker who sends forwarding,
// hop-by-hop or framing fields gets none of them to a backend, whether the
// request came as HTTP/1.1 or HTTP/2, in the head or in the trailers.

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <string>
#include <utility>
#include <vector>

#include "proxy/http/http_message.h"
#include "proxy/l7/h2_request.h"

namespace gatehouse::proxy {
namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// What an attacker adds to an ordinary request.
const std::vector<std::pair<std::string, std::string>> kAttack = {
    {"X-Forwarded-For", "10.0.0.1"},
    {"x-forwarded-proto", "http"},
    {"X-Forwarded-Host", "evil.example"},
    {"Forwarded", "for=10.0.0.1;proto=http"},
    {"X-Forwarded-Client-Cert", "Hash=00;Subject=\"CN=admin\""},
    {"X-FORWARDED-CLIENT-CERT", "Subject=\"CN=admin\""},
    {"Keep-Alive", "timeout=5"},
    {"Proxy-Connection", "keep-alive"},
    {"TE", "trailers"},
    {"Upgrade", "h2c"},
};
// Ordinary end-to-end fields, which must all arrive.
const std::vector<std::pair<std::string, std::string>> kKept = {
    {"Accept", "*/*"},
    {"Authorization", "Basic dXNlcjpwYXNz"},
    {"X-OWA-CANARY", "abc"},
    {"User-Agent", "Outlook"},
};

std::vector<std::string> names(const http::Fields& fields) {
  std::vector<std::string> out;
  for (const auto& f : fields) out.push_back(lower(f.name));
  std::sort(out.begin(), out.end());
  return out;
}

http::RequestHead parse_http1(bool with_connection_list) {
  std::string text = "POST /owa/ HTTP/1.1\r\nHost: mail.contoso.test\r\nContent-Length: 0\r\n";
  for (const auto& [n, v] : kAttack) text += n + ": " + v + "\r\n";
  for (const auto& [n, v] : kKept) text += n + ": " + v + "\r\n";
  if (with_connection_list) text += "Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\n";
  text += "\r\n";
  http::RequestParser parser;
  http::error_code ec;
  parser.feed(text, ec);
  EXPECT_FALSE(ec) << parser.violation();
  EXPECT_TRUE(parser.is_header_done());
  return parser.head();
}

http::RequestHead parse_http2() {
  l7::Http2RequestHead h2;
  EXPECT_TRUE(h2.add(":method", "POST"));
  EXPECT_TRUE(h2.add(":scheme", "https"));
  EXPECT_TRUE(h2.add(":authority", "mail.contoso.test"));
  EXPECT_TRUE(h2.add(":path", "/owa/"));
  EXPECT_TRUE(h2.add("content-length", "0"));
  for (const auto& [n, v] : kAttack) EXPECT_TRUE(h2.add(lower(n), v));
  for (const auto& [n, v] : kKept) EXPECT_TRUE(h2.add(lower(n), v));
  return h2.finish(true);
}

TEST(RequestFilter, BothCodecsForwardTheSameFieldsAndNoneTheClientMayNotSet) {
  const http::RequestHead h1 = parse_http1(false);
  const http::RequestHead h2 = parse_http2();
  std::vector<std::string> expected;
  for (const auto& [n, v] : kKept) expected.push_back(lower(n));
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(names(h1.fields), expected);
  EXPECT_EQ(names(h2.fields), expected);
  EXPECT_EQ(h1.host, "mail.contoso.test");
  EXPECT_EQ(h2.host, "mail.contoso.test");
}

TEST(RequestFilter, FieldsListedInConnectionDoNotCross) {
  const http::RequestHead h1 = parse_http1(true);
  for (const auto& f : h1.fields) EXPECT_NE(lower(f.name), "x-secret");
}

TEST(RequestFilter, EveryAttackFieldIsRefusedByTheFilterInAnyCase) {
  for (const auto& [n, v] : kAttack) {
    EXPECT_FALSE(http::forwards_request_field(n)) << n;
    EXPECT_FALSE(http::forwards_request_field(lower(n))) << n;
  }
  for (const char* framing : {"Content-Length", "Transfer-Encoding", "Connection", "Host", "host"})
    EXPECT_FALSE(http::forwards_request_field(framing)) << framing;
  for (const auto& [n, v] : kKept) EXPECT_TRUE(http::forwards_request_field(n)) << n;
}

TEST(RequestFilter, TrailersPassTheSameFilter) {
  l7::Http2RequestHead h2;
  for (const auto& [n, v] : kAttack) h2.add_trailer(lower(n), v);
  h2.add_trailer(":path", "/ecp/");
  h2.add_trailer("x-checksum", "1");
  ASSERT_EQ(h2.trailers().size(), 1u);
  EXPECT_EQ(h2.trailers()[0].name, "x-checksum");

  std::string text = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n";
  for (const auto& [n, v] : kAttack) text += n + ": " + v + "\r\n";
  text += "X-Checksum: 1\r\n\r\n";
  http::RequestParser parser;
  http::error_code ec;
  std::string in = text;
  while (!in.empty() && !parser.is_done()) {
    const std::size_t used = parser.feed(in, ec);
    ASSERT_FALSE(ec) << parser.violation();
    if (used == 0) break;
    in.erase(0, used);
  }
  ASSERT_TRUE(parser.is_done());
  ASSERT_EQ(parser.trailers().size(), 1u);
  EXPECT_EQ(lower(parser.trailers()[0].name), "x-checksum");
}

TEST(Http2RequestHead, FinishesLikeAnHttp1Head) {
  l7::Http2RequestHead upload;
  upload.add(":method", "POST");
  upload.add(":path", "/ews/exchange.asmx");
  upload.add(":authority", "mail.contoso.test:443");
  upload.add("cookie", "a=1");
  upload.add("cookie", "b=2");
  const http::RequestHead& head = upload.finish(false);
  EXPECT_EQ(head.version, 20);
  EXPECT_EQ(head.target, "/ews/exchange.asmx");
  EXPECT_EQ(head.host, "mail.contoso.test:443");
  EXPECT_TRUE(head.chunked);  // a body of unstated length follows
  EXPECT_TRUE(head.has_body());
  ASSERT_EQ(head.fields.size(), 1u);
  EXPECT_EQ(head.fields[0].value, "a=1; b=2");

  l7::Http2RequestHead empty_post;
  empty_post.add(":method", "POST");
  empty_post.add(":path", "/");
  EXPECT_EQ(empty_post.finish(true).content_length, 0u);
  EXPECT_FALSE(empty_post.head().has_body());

  l7::Http2RequestHead bad;
  EXPECT_FALSE(bad.add("content-length", "12x"));
}

}  // namespace
}  // namespace gatehouse::proxy
