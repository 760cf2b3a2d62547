// The PROXY protocol header a backend connection starts with, checked
// against HAProxy's proxy-protocol.txt: the v1 text line for every family
// mix, the v2 binary header byte by byte, and the PP2_TYPE_SSL TLV built
// from the client's handshake as HAProxy's send-proxy-v2-ssl-cn writes it.

#include "proxy/runtime/proxy_protocol.h"

#include <gtest/gtest.h>

#include <boost/asio/ip/address.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "proxy/tls/listener_tls.h"

namespace gatehouse::proxy {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

tcp::endpoint ep(const char* address, std::uint16_t port) { return {asio::ip::make_address(address), port}; }

// "0d 0a ..." -> bytes, so expected headers read like the spec's tables.
std::string bytes(std::string_view hex) {
  std::string out;
  int high = -1;
  for (char c : hex) {
    int v = -1;
    if (c >= '0' && c <= '9') v = c - '0';
    else if (c >= 'a' && c <= 'f') v = c - 'a' + 10;
    if (v < 0) continue;
    if (high < 0) high = v;
    else {
      out += static_cast<char>(high << 4 | v);
      high = -1;
    }
  }
  return out;
}

std::string hex(std::string_view data) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : data) {
    if (!out.empty()) out += ' ';
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

const std::string kSignature = bytes("0d 0a 0d 0a 00 0d 0a 51 55 49 54 0a");

// ---- v1

struct V1Case {
  const char* name;
  tcp::endpoint client;
  tcp::endpoint local;
  const char* line;
};

void PrintTo(const V1Case& c, std::ostream* out) { *out << c.name; }

class ProxyV1 : public ::testing::TestWithParam<V1Case> {};

TEST_P(ProxyV1, LineIsAsTheSpecWritesIt) {
  const V1Case& c = GetParam();
  const std::string line = proxy_header_v1(c.client, c.local);
  EXPECT_EQ(line, c.line);
  // A receiver must accept up to 107 bytes, CRLF included; nothing longer.
  EXPECT_LE(line.size(), 107u);
}

const V1Case v1_cases[] = {
    {"ipv4", ep("192.0.2.10", 51234), ep("198.51.100.1", 443), "PROXY TCP4 192.0.2.10 198.51.100.1 51234 443\r\n"},
    {"ipv4_longest", ep("255.255.255.255", 65535), ep("255.255.255.255", 65535),
     "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"},
    {"ipv4_port_zero", ep("10.0.0.1", 0), ep("10.0.0.2", 1), "PROXY TCP4 10.0.0.1 10.0.0.2 0 1\r\n"},
    {"ipv6", ep("2001:db8::1", 40000), ep("2001:db8::443", 8443),
     "PROXY TCP6 2001:db8::1 2001:db8::443 40000 8443\r\n"},
    {"ipv6_compressed_form", ep("2001:0DB8:0000:0000:0000:0000:0000:0001", 1), ep("::1", 2),
     "PROXY TCP6 2001:db8::1 ::1 1 2\r\n"},
    {"ipv6_longest", ep("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
     ep("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
     "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"},
    // One family for both addresses: the IPv4 side is written IPv4-mapped.
    {"mixed_ipv4_client_ipv6_local", ep("192.0.2.10", 51234), ep("2001:db8::443", 443),
     "PROXY TCP6 ::ffff:192.0.2.10 2001:db8::443 51234 443\r\n"},
    {"mixed_ipv6_client_ipv4_local", ep("2001:db8::1", 51234), ep("198.51.100.1", 443),
     "PROXY TCP6 2001:db8::1 ::ffff:198.51.100.1 51234 443\r\n"},
    // A listener bound to [::] sees IPv4 clients as mapped addresses: they
    // stay IPv6, as the socket gave them.
    {"v4_mapped_both", ep("::ffff:192.0.2.10", 51234), ep("::ffff:198.51.100.1", 443),
     "PROXY TCP6 ::ffff:192.0.2.10 ::ffff:198.51.100.1 51234 443\r\n"},
    // The zone of a link-local address means nothing to the receiver.
    {"ipv6_zone_dropped", tcp::endpoint(asio::ip::address_v6(asio::ip::make_address_v6("fe80::1").to_bytes(), 2), 1000),
     ep("fe80::2", 443), "PROXY TCP6 fe80::1 fe80::2 1000 443\r\n"},
};

INSTANTIATE_TEST_SUITE_P(Cases, ProxyV1, ::testing::ValuesIn(v1_cases),
                         [](const auto& info) { return std::string(info.param.name); });

// ---- v2

struct V2Case {
  const char* name;
  tcp::endpoint client;
  tcp::endpoint local;
  const char* after_signature;  // version/command, family, length, addresses, ports
};

void PrintTo(const V2Case& c, std::ostream* out) { *out << c.name; }

class ProxyV2 : public ::testing::TestWithParam<V2Case> {};

TEST_P(ProxyV2, HeaderIsAsTheSpecLaysItOut) {
  const V2Case& c = GetParam();
  EXPECT_EQ(hex(proxy_header_v2(c.client, c.local)), hex(kSignature + bytes(c.after_signature)));
}

const V2Case v2_cases[] = {
    // What HAProxy itself sent for 172.19.0.1:42578 -> 172.19.0.3:80.
    {"ipv4_as_haproxy_sends_it", ep("172.19.0.1", 42578), ep("172.19.0.3", 80),
     "21 11 000c  ac 13 00 01  ac 13 00 03  a6 52  00 50"},
    {"ipv4", ep("192.0.2.10", 51234), ep("198.51.100.1", 443), "21 11 000c  c0 00 02 0a  c6 33 64 01  c8 22  01 bb"},
    {"ipv6", ep("2001:db8::1", 65535), ep("::1", 1),
     "21 21 0024  20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01"
     "  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01  ff ff  00 01"},
    {"mixed_ipv4_client_ipv6_local", ep("192.0.2.10", 51234), ep("2001:db8::443", 443),
     "21 21 0024  00 00 00 00 00 00 00 00 00 00 ff ff c0 00 02 0a"
     "  20 01 0d b8 00 00 00 00 00 00 00 00 00 00 04 43  c8 22  01 bb"},
    {"mixed_ipv6_client_ipv4_local", ep("2001:db8::1", 51234), ep("198.51.100.1", 443),
     "21 21 0024  20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01"
     "  00 00 00 00 00 00 00 00 00 00 ff ff c6 33 64 01  c8 22  01 bb"},
    {"v4_mapped_both", ep("::ffff:192.0.2.10", 51234), ep("::ffff:198.51.100.1", 443),
     "21 21 0024  00 00 00 00 00 00 00 00 00 00 ff ff c0 00 02 0a"
     "  00 00 00 00 00 00 00 00 00 00 ff ff c6 33 64 01  c8 22  01 bb"},
    {"ipv6_zone_dropped", tcp::endpoint(asio::ip::address_v6(asio::ip::make_address_v6("fe80::1").to_bytes(), 7), 1000),
     ep("fe80::2", 443),
     "21 21 0024  fe 80 00 00 00 00 00 00 00 00 00 00 00 00 00 01"
     "  fe 80 00 00 00 00 00 00 00 00 00 00 00 00 00 02  03 e8  01 bb"},
};

INSTANTIATE_TEST_SUITE_P(Cases, ProxyV2, ::testing::ValuesIn(v2_cases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(ProxyV2Tlvs, FollowTheAddressesAndCountInTheLength) {
  const std::string tlvs = bytes("04 0000  04 0003 616263");  // PP2_TYPE_NOOP, empty and "abc"
  const std::string v4 = proxy_header_v2(ep("10.0.0.1", 1), ep("10.0.0.2", 2), tlvs);
  EXPECT_EQ(hex(v4), hex(kSignature + bytes("21 11 0015  0a 00 00 01  0a 00 00 02  00 01  00 02") + tlvs));
  const std::string v6 = proxy_header_v2(ep("::1", 1), ep("::2", 2), tlvs);
  ASSERT_EQ(v6.size(), 16u + 36u + tlvs.size());
  EXPECT_EQ(hex(v6.substr(12, 4)), "21 21 00 2d");  // 36 + 9
  EXPECT_EQ(v6.substr(16 + 36), tlvs);
}

// ---- PP2_TYPE_SSL

// The TLV parsed back: type, then its value.
struct Tlv {
  std::uint8_t type = 0;
  std::string value;
};

std::vector<Tlv> parse_tlvs(std::string_view data) {
  std::vector<Tlv> out;
  while (!data.empty()) {
    EXPECT_GE(data.size(), 3u) << "truncated TLV header";
    if (data.size() < 3) break;
    const std::size_t length =
        static_cast<std::size_t>(static_cast<unsigned char>(data[1])) << 8 | static_cast<unsigned char>(data[2]);
    EXPECT_LE(3 + length, data.size()) << "TLV longer than what follows";
    if (3 + length > data.size()) break;
    out.push_back({static_cast<std::uint8_t>(data[0]), std::string(data.substr(3, length))});
    data.remove_prefix(3 + length);
  }
  return out;
}

HandshakeInfo verified_client(std::string cn, bool this_connection) {
  HandshakeInfo info;
  info.sni = "mail.contoso.com";
  info.client_verify = "SUCCESS";
  info.client_subject = "CN=" + cn;
  info.client_cn = std::move(cn);
  info.client_cert_this_connection = this_connection;
  return info;
}

TEST(ProxySslTlv, WithoutClientCertificate) {
  HandshakeInfo info;  // client_verify "NONE"
  info.sni = "mail.contoso.com";
  EXPECT_EQ(hex(proxy_ssl_tlv(info, "TLSv1.3")), hex(bytes("20 000f  01  00 00 00 01  21 0007") + "TLSv1.3"));
}

TEST(ProxySslTlv, VerifiedCertificateOnThisConnection) {
  EXPECT_EQ(hex(proxy_ssl_tlv(verified_client("alice", true), "TLSv1.2")),
            hex(bytes("20 0017  07  00 00 00 00  21 0007") + "TLSv1.2" + bytes("22 0005") + "alice"));
}

TEST(ProxySslTlv, VerifiedCertificateFromTheResumedSession) {
  // PP2_CLIENT_CERT_SESS without PP2_CLIENT_CERT_CONN.
  const auto tlv = parse_tlvs(proxy_ssl_tlv(verified_client("alice", false), "TLSv1.3"));
  ASSERT_EQ(tlv.size(), 1u);
  ASSERT_GE(tlv[0].value.size(), 5u);
  EXPECT_EQ(tlv[0].value[0], 0x05);
  EXPECT_EQ(hex(tlv[0].value.substr(1, 4)), "00 00 00 00");
}

TEST(ProxySslTlv, RefusedCertificateIsNotPassedOn) {
  // Neither certificate flag, verify non-zero, no CN: the backend must not
  // take an unverified name for an identity.
  HandshakeInfo info = verified_client("mallory", true);
  info.client_verify = "certificate has expired";
  const auto outer = parse_tlvs(proxy_ssl_tlv(info, "TLSv1.3"));
  ASSERT_EQ(outer.size(), 1u);
  EXPECT_EQ(outer[0].type, 0x20);
  const std::string& value = outer[0].value;
  ASSERT_GE(value.size(), 5u);
  EXPECT_EQ(value[0], 0x01);
  EXPECT_EQ(hex(value.substr(1, 4)), "00 00 00 01");
  const auto sub = parse_tlvs(std::string_view(value).substr(5));
  ASSERT_EQ(sub.size(), 1u);
  EXPECT_EQ(sub[0].type, 0x21);
  EXPECT_EQ(value.find("mallory"), std::string::npos);
}

TEST(ProxySslTlv, WithoutVersionThereIsNoVersionSubTlv) {
  const auto outer = parse_tlvs(proxy_ssl_tlv(verified_client("alice", true), nullptr));
  ASSERT_EQ(outer.size(), 1u);
  const auto sub = parse_tlvs(std::string_view(outer[0].value).substr(5));
  ASSERT_EQ(sub.size(), 1u);
  EXPECT_EQ(sub[0].type, 0x22);
  EXPECT_EQ(sub[0].value, "alice");
}

TEST(ProxySslTlv, LongCommonNamesAreLeftOutNotCut) {
  const std::string fits(0xfff, 'a');
  auto sub = parse_tlvs(
      std::string_view(parse_tlvs(proxy_ssl_tlv(verified_client(fits, true), "TLSv1.3"))[0].value).substr(5));
  ASSERT_EQ(sub.size(), 2u);
  EXPECT_EQ(sub[1].value, fits);

  const auto outer = parse_tlvs(proxy_ssl_tlv(verified_client(std::string(0x1000, 'a'), true), "TLSv1.3"));
  ASSERT_EQ(outer.size(), 1u);
  sub = parse_tlvs(std::string_view(outer[0].value).substr(5));
  ASSERT_EQ(sub.size(), 1u);
  EXPECT_EQ(sub[0].type, 0x21);
  EXPECT_EQ(outer[0].value[0], 0x07);  // the certificate was still verified
}

TEST(ProxySslTlv, InsideAV2HeaderAsTheBackendReadsIt) {
  const std::string tlv = proxy_ssl_tlv(verified_client("alice", true), "TLSv1.3");
  const std::string header = proxy_header_v2(ep("192.0.2.10", 51234), ep("198.51.100.1", 443), tlv);
  ASSERT_EQ(header.substr(0, 12), kSignature);
  const std::size_t length =
      static_cast<std::size_t>(static_cast<unsigned char>(header[14])) << 8 | static_cast<unsigned char>(header[15]);
  ASSERT_EQ(header.size(), 16 + length);
  const auto tlvs = parse_tlvs(std::string_view(header).substr(16 + 12));
  ASSERT_EQ(tlvs.size(), 1u);
  EXPECT_EQ(tlvs[0].type, 0x20);
  const auto sub = parse_tlvs(std::string_view(tlvs[0].value).substr(5));
  ASSERT_EQ(sub.size(), 2u);
  EXPECT_EQ(sub[0].type, 0x21);
  EXPECT_EQ(sub[0].value, "TLSv1.3");
  EXPECT_EQ(sub[1].type, 0x22);
  EXPECT_EQ(sub[1].value, "alice");
}

}  // namespace
}  // namespace gatehouse::proxy
