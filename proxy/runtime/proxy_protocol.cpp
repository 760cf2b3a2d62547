#include "proxy/runtime/proxy_protocol.h"

#include <cstdint>

#include "proxy/tls/listener_tls.h"

namespace gatehouse::proxy {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {

// An address as TCP6 needs it: IPv4 mapped, as proxy_header_v2 does too,
// and without the zone a link-local client's address carries ("fe80::1%2"):
// the zone means nothing to the receiver, which would refuse the line (it
// may also push it past the 107 bytes a v1 line is allowed).
asio::ip::address_v6 as_v6(const asio::ip::address& address) {
  if (address.is_v4()) return asio::ip::make_address_v6(asio::ip::v4_mapped, address.to_v4());
  return asio::ip::address_v6(address.to_v6().to_bytes());
}

}  // namespace

std::string proxy_header_v1(const tcp::endpoint& client, const tcp::endpoint& local) {
  const bool v4 = client.address().is_v4() && local.address().is_v4();
  // One family for both: a receiver parses TCP6 addresses as IPv6 only.
  const std::string source = v4 ? client.address().to_string() : as_v6(client.address()).to_string();
  const std::string destination = v4 ? local.address().to_string() : as_v6(local.address()).to_string();
  return std::string("PROXY ") + (v4 ? "TCP4 " : "TCP6 ") + source + " " + destination + " " +
         std::to_string(client.port()) + " " + std::to_string(local.port()) + "\r\n";
}

std::string proxy_header_v2(const tcp::endpoint& client, const tcp::endpoint& local, std::string_view tlvs) {
  std::string h("\r\n\r\n\0\r\nQUIT\n", 12);
  h += static_cast<char>(0x21);  // version 2, PROXY command
  auto put16 = [&](uint16_t v) {
    h += static_cast<char>(v >> 8);
    h += static_cast<char>(v & 0xff);
  };
  if (client.address().is_v4() && local.address().is_v4()) {
    h += static_cast<char>(0x11);  // TCP over IPv4
    put16(static_cast<uint16_t>(12 + tlvs.size()));
    for (auto b : client.address().to_v4().to_bytes()) h += static_cast<char>(b);
    for (auto b : local.address().to_v4().to_bytes()) h += static_cast<char>(b);
  } else {
    auto v6 = [](const tcp::endpoint& e) {
      return e.address().is_v6() ? e.address().to_v6()
                                 : asio::ip::make_address_v6(asio::ip::v4_mapped, e.address().to_v4());
    };
    h += static_cast<char>(0x21);  // TCP over IPv6
    put16(static_cast<uint16_t>(36 + tlvs.size()));
    for (auto b : v6(client).to_bytes()) h += static_cast<char>(b);
    for (auto b : v6(local).to_bytes()) h += static_cast<char>(b);
  }
  put16(client.port());
  put16(local.port());
  h += tlvs;
  return h;
}

std::string proxy_ssl_tlv(const HandshakeInfo& tls, const char* version) {
  constexpr uint8_t PP2_TYPE_SSL = 0x20, PP2_SUBTYPE_SSL_VERSION = 0x21, PP2_SUBTYPE_SSL_CN = 0x22;
  constexpr uint8_t PP2_CLIENT_SSL = 0x01, PP2_CLIENT_CERT_CONN = 0x02, PP2_CLIENT_CERT_SESS = 0x04;
  auto tlv = [](uint8_t type, std::string_view value) {
    std::string out(1, static_cast<char>(type));
    out += static_cast<char>((value.size() >> 8) & 0xff);
    out += static_cast<char>(value.size() & 0xff);
    out += value;
    return out;
  };
  uint8_t client = PP2_CLIENT_SSL;
  if (tls.client_verified()) {
    client |= PP2_CLIENT_CERT_SESS;
    if (tls.client_cert_this_connection) client |= PP2_CLIENT_CERT_CONN;
  }
  std::string value(1, static_cast<char>(client));
  value += std::string("\0\0\0", 3) + static_cast<char>(tls.client_verified() ? 0 : 1);
  if (version != nullptr) value += tlv(PP2_SUBTYPE_SSL_VERSION, version);
  // A CN longer than a TLV can hold is left out rather than cut.
  if (tls.client_verified() && !tls.client_cn.empty() && tls.client_cn.size() < 0x1000)
    value += tlv(PP2_SUBTYPE_SSL_CN, tls.client_cn);
  return tlv(PP2_TYPE_SSL, value);
}

}  // namespace gatehouse::proxy
