#pragma once
// The PROXY protocol header (HAProxy's proxy-protocol.txt) a backend
// connection starts with when its listener says proxy_protocol = "v1" or
// "v2": the client's address as the proxy saw it. Kept apart from the
// connect code so that it can be fuzzed on its own (tests/fuzz/).

#include <boost/asio/ip/tcp.hpp>

#include <string>
#include <string_view>

namespace gatehouse::proxy {

struct HandshakeInfo;

// "PROXY TCP4 <client> <local> <client port> <local port>\r\n".
std::string proxy_header_v1(const boost::asio::ip::tcp::endpoint& client, const boost::asio::ip::tcp::endpoint& local);
// The binary header: signature, PROXY command, TCP over IPv4 or IPv6, addresses and ports,
// then `tlvs` (already encoded, e.g. PP2_TYPE_SSL), counted in its length.
std::string proxy_header_v2(const boost::asio::ip::tcp::endpoint& client, const boost::asio::ip::tcp::endpoint& local,
                            std::string_view tlvs = {});
// PP2_TYPE_SSL (section 2.2.5) as HAProxy's send-proxy-v2-ssl-cn writes it:
// client flags, verify (0 only for a verified certificate), then the TLS
// version (`version` as SSL_get_version says it, none when null) and the
// client's CN. An argument for proxy_header_v2's `tlvs`.
std::string proxy_ssl_tlv(const HandshakeInfo& tls, const char* version);

}  // namespace gatehouse::proxy
