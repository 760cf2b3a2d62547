#include "proxy/l7/windows_auth.h"

#include <gtest/gtest.h>
#include <openssl/base64.h>

#include <cstdint>
#include <string>

namespace gatehouse::proxy::l7 {
namespace {

void put16(std::string& m, std::size_t at, std::uint16_t v) {
  m[at] = static_cast<char>(v & 0xff);
  m[at + 1] = static_cast<char>(v >> 8);
}

void put32(std::string& m, std::size_t at, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) m[at + i] = static_cast<char>((v >> (8 * i)) & 0xff);
}

std::string utf16(std::string_view ascii) {
  std::string out;
  for (char c : ascii) {
    out += c;
    out += '\0';
  }
  return out;
}

// An NTLM Type 3 message naming `domain` and `user` (responses are filler).
std::string type3(const std::string& domain, const std::string& user, bool unicode = true) {
  std::string m(64, '\0');
  m.replace(0, 8, std::string("NTLMSSP\0", 8));
  put32(m, 8, 3);
  const std::string nt(24, 'x');
  const std::string d = unicode ? utf16(domain) : domain;
  const std::string u = unicode ? utf16(user) : user;
  auto add = [&](std::size_t at, const std::string& payload) {
    put16(m, at, static_cast<std::uint16_t>(payload.size()));
    put16(m, at + 2, static_cast<std::uint16_t>(payload.size()));
    put32(m, at + 4, static_cast<std::uint32_t>(m.size()));
    m += payload;
  };
  add(12, std::string(24, '\0'));
  add(20, nt);
  add(28, d);
  add(36, u);
  add(44, unicode ? utf16("WS01") : "WS01");
  add(52, "");
  put32(m, 60, unicode ? 0xa2888205u : 0xa2888204u);
  return m;
}

std::string base64(const std::string& bytes) {
  std::size_t n = 0;
  EVP_EncodedLength(&n, bytes.size());
  std::string out(n, '\0');
  const std::size_t written = EVP_EncodeBlock(reinterpret_cast<std::uint8_t*>(out.data()),
                                              reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
  out.resize(written);
  return out;
}

TEST(WindowsAuth, NtlmType3NamesDomainAndUser) {
  EXPECT_EQ(ntlm_user(type3("CONTOSO", "alice")), "CONTOSO\\alice");
  EXPECT_EQ(ntlm_user(type3("", "bob")), "bob");
  EXPECT_EQ(ntlm_user(type3("FABRIKAM", "carol", false)), "FABRIKAM\\carol");
}

TEST(WindowsAuth, NtlmInsideSpnegoIsFoundBySignature) {
  const std::string spnego =
      std::string("\xa1\x81\x90\x30\x81\x8d\xa2\x81\x8a\x04\x81\x87", 12) + type3("CONTOSO", "dave");
  EXPECT_EQ(ntlm_user(spnego), "CONTOSO\\dave");
  const RequestAuth auth = parse_authorization("Negotiate " + base64(spnego));
  EXPECT_TRUE(auth.connection_bound);
  EXPECT_TRUE(auth.final_leg);
  EXPECT_EQ(auth.user, "CONTOSO\\dave");
}

TEST(WindowsAuth, MalformedNtlmNamesNobody) {
  std::string m = type3("CONTOSO", "alice");
  EXPECT_FALSE(ntlm_user(m.substr(0, 63)));  // shorter than the fixed part
  std::string wrong_type = m;
  put32(wrong_type, 8, 1);  // a Type 1
  EXPECT_FALSE(ntlm_user(wrong_type));
  std::string outside = m;
  put32(outside, 40, 0xfffffff0u);  // user offset past the end
  EXPECT_FALSE(ntlm_user(outside));
  std::string too_long = m;
  put16(too_long, 36, 0xffff);  // user length past the end
  EXPECT_FALSE(ntlm_user(too_long));
  EXPECT_FALSE(ntlm_user("garbage"));
  // Still a connection-bound scheme, just without a user.
  const RequestAuth auth = parse_authorization("NTLM " + base64(outside));
  EXPECT_TRUE(auth.connection_bound);
  EXPECT_FALSE(auth.final_leg);
  EXPECT_EQ(auth.user, "");
  EXPECT_TRUE(parse_authorization("NTLM !!!not-base64").connection_bound);
}

TEST(WindowsAuth, SchemesThatBindTheConnection) {
  EXPECT_TRUE(parse_authorization("NTLM TlRMTVNTUAABAAAAB4IIog==").connection_bound);
  EXPECT_TRUE(parse_authorization("ntlm TlRMTVNTUAABAAAAB4IIog==").connection_bound);
  EXPECT_TRUE(parse_authorization("Negotiate YIIHAAYGKwYBBQUCoIIG9DCCBvA=").connection_bound);
  EXPECT_TRUE(parse_authorization("Kerberos YIIHAA==").connection_bound);
  EXPECT_FALSE(parse_authorization("Basic YWxpY2U6c2VjcmV0").connection_bound);
  EXPECT_FALSE(parse_authorization("Bearer eyJhbGciOi").connection_bound);
  EXPECT_FALSE(request_auth(Fields{{"Cookie", "a=b"}}));
  const auto both =
      request_auth(Fields{{"Authorization", "Basic YWxpY2U6c2VjcmV0"}, {"Proxy-Authorization", "Negotiate YIIHAA=="}});
  ASSERT_TRUE(both);
  EXPECT_TRUE(both->connection_bound);
  EXPECT_EQ(both->scheme, "Negotiate");
}

TEST(WindowsAuth, BasicLogsTheUserNeverThePassword) {
  const RequestAuth auth = parse_authorization("Basic " + base64("CONTOSO\\alice:pa:ss"));
  EXPECT_EQ(auth.scheme, "Basic");
  EXPECT_EQ(auth.user, "CONTOSO\\alice");
  EXPECT_EQ(parse_authorization("Basic " + base64("nopassword")).user, "nopassword");
}

TEST(WindowsAuth, ResponsesThatBindTheConnection) {
  EXPECT_TRUE(response_binds(401, Fields{{"WWW-Authenticate", "NTLM"}}));
  EXPECT_TRUE(
      response_binds(401, Fields{{"WWW-Authenticate", "Basic realm=\"x\""}, {"www-authenticate", "Negotiate"}}));
  EXPECT_TRUE(response_binds(401, Fields{{"WWW-Authenticate", "Basic realm=\"x\", NTLM"}}));
  EXPECT_TRUE(response_binds(401, Fields{{"WWW-Authenticate", "NTLM TlRMTVNTUAACAAAA"}}));
  EXPECT_TRUE(response_binds(407, Fields{{"Proxy-Authenticate", "Negotiate"}}));
  EXPECT_TRUE(response_binds(200, Fields{{"Persistent-Auth", "true"}}));
  EXPECT_FALSE(response_binds(401, Fields{{"WWW-Authenticate", "Basic realm=\"NTLMish\""}}));
  EXPECT_FALSE(response_binds(401, Fields{{"WWW-Authenticate", "Bearer"}}));
  // Only a 401/407 offers a handshake; a 200 with the same field ends one.
  EXPECT_FALSE(response_binds(200, Fields{{"WWW-Authenticate", "Negotiate oRQwEqADCgEAoQsGCSqGSIb3EgECAg=="}}));
}

TEST(WindowsAuth, Base64) {
  EXPECT_EQ(decode_base64("YWxpY2U6c2VjcmV0"), "alice:secret");
  EXPECT_EQ(decode_base64("YQ"), "a");  // padding optional
  EXPECT_FALSE(decode_base64("!!!!"));
}

}  // namespace
}  // namespace gatehouse::proxy::l7
