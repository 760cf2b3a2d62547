#pragma once
// Front-side TLS of one listener: one SSL_CTX per certificate, and a front
// SSL_CTX whose early callback (before any key is used) asks the listener's
// SniIndex which certificate to serve and switches the connection to it.

#include <openssl/ssl.h>

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "conf/config.h"
#include "sni/certificate.h"
#include "sni/index.h"

namespace gatehouse::proxy {

class TicketKeys;

// What the handshake decided, for logs and metrics. Owned by the connection;
// attached to its SSL for the callbacks.
struct HandshakeInfo {
  std::string sni;  // as sent, "" when absent
  const sni::LoadedCertificate* certificate = nullptr;
  sni::MatchKind match = sni::MatchKind::rejected;
  bool rejected = false;
};

class ListenerTls {
 public:
  // Throws std::runtime_error naming the listener when BoringSSL refuses the
  // certificate or the policy.
  ListenerTls(const conf::Listener& listener,
              std::vector<std::shared_ptr<const sni::LoadedCertificate>> certificates,
              TicketKeys& ticket_keys);
  ~ListenerTls();
  ListenerTls(const ListenerTls&) = delete;
  ListenerTls& operator=(const ListenerTls&) = delete;

  // A server-side SSL for one accepted connection; `info` must outlive it.
  bssl::UniquePtr<SSL> new_connection(HandshakeInfo* info) const;
  const sni::SniIndex& index() const { return index_; }

 private:
  static ssl_select_cert_result_t select_certificate(const SSL_CLIENT_HELLO* hello);
  static int check_server_name(SSL* ssl, int* alert, void* arg);
  static int select_alpn(SSL* ssl, const uint8_t** out, uint8_t* out_len, const uint8_t* in, unsigned in_len,
                         void* arg);

  sni::SniIndex index_;
  std::vector<std::string> alpn_;  // the listener's `alpn`, in preference order
  bssl::UniquePtr<SSL_CTX> front_;
  std::unordered_map<const sni::LoadedCertificate*, bssl::UniquePtr<SSL_CTX>> contexts_;
};

// Applies a listener's `tls` policy: "modern" = TLS 1.2 + 1.3 with ECDHE and
// AEAD only; "tls13" = TLS 1.3 only. BoringSSL never renegotiates as a server.
void apply_tls_policy(SSL_CTX* ctx, conf::TlsPolicy policy);

// True when the ClientHello allows an ECDSA certificate: an ECDSA signature
// algorithm, and (for a client without TLS 1.3) an ECDHE-ECDSA cipher suite.
bool client_offers_ecdsa(const SSL_CLIENT_HELLO* hello);

}  // namespace gatehouse::proxy
