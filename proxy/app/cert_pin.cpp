#include "proxy/app/cert_pin.h"

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "conf/config.h"
#include "sni/certificate.h"

namespace gatehouse::proxy {

int cert_pin(const std::string& target, const std::string& sni_name, std::ostream& out, std::ostream& err) {
  namespace asio = boost::asio;
  const auto address = conf::parse_address(target);
  if (!address || address->port == 0) {
    err << "cert pin: \"" << target << "\" is not HOST:PORT (e.g. mbx01.contoso.com:443 or [::1]:443)\n";
    return 1;
  }
  asio::io_context io;
  asio::ip::tcp::resolver resolver(io);
  asio::ip::tcp::socket socket(io);
  boost::system::error_code ec;
  auto endpoints = resolver.resolve(address->host, std::to_string(address->port), ec);
  if (!ec) asio::connect(socket, endpoints, ec);
  if (ec) {
    err << "cert pin: cannot connect to " << target << ": " << ec.message() << "\n";
    return 1;
  }
  bssl::UniquePtr<SSL_CTX> ctx(SSL_CTX_new(TLS_method()));
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);  // we only look at what is presented
  bssl::UniquePtr<SSL> ssl(SSL_new(ctx.get()));
  const std::string name = sni_name.empty() ? address->host : sni_name;
  if (name.find_first_not_of("0123456789.:") != std::string::npos) SSL_set_tlsext_host_name(ssl.get(), name.c_str());
  SSL_set_fd(ssl.get(), socket.native_handle());
  if (SSL_connect(ssl.get()) != 1) {
    char buf[256];
    ERR_error_string_n(ERR_get_error(), buf, sizeof buf);
    err << "cert pin: TLS handshake with " << target << " failed: " << buf << "\n";
    return 1;
  }
  bssl::UniquePtr<X509> leaf(SSL_get_peer_certificate(ssl.get()));
  if (!leaf) {
    err << "cert pin: " << target << " presented no certificate\n";
    return 1;
  }
  const sni::CertificateInfo info = sni::describe(leaf.get());
  out << "Subject            : " << info.subject << "\n";
  out << "Issuer             : " << info.issuer << "\n";
  out << "CertificateDomains : ";
  for (std::size_t i = 0; i < info.dns_names.size(); ++i) out << (i ? ", " : "") << info.dns_names[i];
  out << "\nThumbprint         : " << info.thumbprint << "\n";
  out << "Sha256Pin          : " << info.sha256_pin << "\n";
  out << "IsSelfSigned       : " << (info.self_signed ? "True" : "False") << "\n\n";
  out << "# paste into the [[server]] table of " << target << ":\n";
  // The name to verify: a DNS SAN when the certificate has one (the CN is
  // ignored by verifiers then), else the CN, else what was dialled.
  const std::string suggested = !info.dns_names.empty()     ? info.dns_names.front()
                                : !info.common_name.empty() ? info.common_name
                                                            : name;
  out << "server_name = \"" << suggested << "\"\n";
  out << "pin = \"" << info.sha256_pin << "\"   # or the thumbprint: \"" << info.thumbprint << "\"\n";
  SSL_shutdown(ssl.get());
  return 0;
}

}  // namespace gatehouse::proxy
